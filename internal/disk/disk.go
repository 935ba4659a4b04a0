// Package disk makes per-VM root disks from a base ext4 image.
//
// Clone copies an image cheaply: with FICLONE where the filesystem can share
// extents (XFS, btrfs), else with a sparse copy that moves only the data
// regions found by SEEK_DATA/SEEK_HOLE. Grow enlarges the ext4 filesystem in
// an image (truncate, e2fsck, resize2fs), Create does both, and Allocated
// reports how much space a file really takes, to check sparseness.
//
// The package is Linux-only and Grow needs e2fsck and resize2fs (e2fsprogs).
package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Method says how a clone was made.
type Method string

const (
	// Reflink means FICLONE was used: the clone shares the base's extents
	// (XFS, btrfs) and takes no new space until either file is written.
	Reflink Method = "reflink"
	// Sparse means a SEEK_DATA/SEEK_HOLE copy of the data regions only; holes
	// stay holes.
	Sparse Method = "sparse"
)

// Clone copies src to dst. dst must not exist; it is created with mode 0600.
//
// Where the filesystem supports it, the copy is a FICLONE reflink (Method
// Reflink). Otherwise Clone walks src with SEEK_DATA/SEEK_HOLE, copies only
// the data regions (with copy_file_range, or pread/pwrite where that is not
// available) and truncates dst to src's size (Method Sparse). It never makes
// a dense copy. ctx is checked before the reflink and between regions. On any
// error dst is removed, unless it existed before the call, in which case it
// is left untouched.
func Clone(ctx context.Context, src, dst string) (m Method, err error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	// O_NOFOLLOW: a VM's directory is its hypervisor's uid's, and a symlink
	// planted there must not make the daemon copy another file.
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("clone %s to %s: source is not a regular file (%s)", src, dst, fi.Mode().Type())
	}

	// O_EXCL: never clobber an existing file, and only ever remove what
	// this call created.
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("clone %s to %s: %w", src, dst, cerr)
		}
		if err != nil {
			m = ""
			_ = os.Remove(dst)
		}
	}()
	// The mode passed to OpenFile is filtered by the umask; make it exact.
	if err := out.Chmod(0o600); err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}

	m, err = cloneFile(ctx, in, out, fi.Size())
	if err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	return m, nil
}

// Create makes a disk image at dst from the ext4 image base: it clones base
// (see Clone) and grows the clone to size bytes (see Grow). On any error
// nothing is left at dst, except a file that existed before the call, which
// is never touched.
func Create(ctx context.Context, base, dst string, size int64) (Method, error) {
	if size <= 0 {
		return "", fmt.Errorf("create %s: invalid size %d", dst, size)
	}
	if fi, err := os.Stat(base); err == nil && fi.Mode().IsRegular() && size < fi.Size() {
		// Fail before paying for the clone; Grow would refuse anyway.
		return "", fmt.Errorf("create %s: size %d is smaller than base %s (%d bytes)", dst, size, base, fi.Size())
	}
	m, err := Clone(ctx, base, dst)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", dst, err)
	}
	if err := Grow(ctx, dst, size); err != nil {
		if rerr := os.Remove(dst); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return "", fmt.Errorf("create %s: %w (and removing it failed: %v)", dst, err, rerr)
		}
		return "", fmt.Errorf("create %s: %w", dst, err)
	}
	return m, nil
}

// Allocated returns the bytes actually allocated to the file at path
// (st_blocks*512), which for a sparse file is much less than its size.
// Extents a reflinked file shares with another file are counted in full.
func Allocated(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("allocated: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("allocated %s: no stat_t for this file", path)
	}
	return st.Blocks * 512, nil
}
