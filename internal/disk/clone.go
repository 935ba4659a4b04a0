package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// chunk bounds one copy_file_range or pread/pwrite round, so that a large
// data region is still copied in steps between which ctx is checked.
const chunk = 64 << 20

// bufSize is the buffer of the pread/pwrite fallback.
const bufSize = 1 << 20

// cloneFile fills the empty file out with the contents of in (size bytes),
// by reflink if it can and by sparse copy if not.
func cloneFile(ctx context.Context, in, out *os.File, size int64) (Method, error) {
	err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	if err == nil {
		return Reflink, nil
	}
	if !cloneUnsupported(err) {
		return "", fmt.Errorf("ficlone: %w", err)
	}
	if err := sparseCopy(ctx, in, out, size); err != nil {
		return "", err
	}
	return Sparse, nil
}

// cloneUnsupported reports whether a FICLONE error means "this filesystem or
// this pair of files cannot share extents", so a sparse copy should be made
// instead. Other errors (EIO, ENOSPC, EBADF...) are real failures.
func cloneUnsupported(err error) bool {
	for _, e := range []error{
		unix.EOPNOTSUPP, // filesystem has no remap_file_range (ext4, tmpfs)
		unix.ENOTTY,     // ioctl unknown to the filesystem
		unix.EXDEV,      // src and dst on different filesystems/mounts
		unix.EINVAL,     // e.g. unaligned size or unsupported file type
		unix.ENOSYS,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// copyUnsupported reports whether a copy_file_range error means the kernel
// or filesystem cannot do it for these files, so pread/pwrite should be used.
func copyUnsupported(err error) bool {
	for _, e := range []error{
		unix.ENOSYS,     // kernel without copy_file_range
		unix.EXDEV,      // cross-filesystem copy refused
		unix.EOPNOTSUPP, // filesystem refuses
		unix.EINVAL,     // e.g. special files, or flags/offsets not allowed
		unix.EBADF,      // some filesystems (old kernels) with O_APPEND etc.
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// sparseCopy copies the data regions of in to the same offsets of out, found
// with SEEK_DATA/SEEK_HOLE, then sets out's size to size. Holes (and, on
// most filesystems, unwritten extents, which read as zeros) are not copied.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	sfd, dfd := int(in.Fd()), int(out.Fd())
	c := copier{sfd: sfd, dfd: dfd}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off: the rest is a hole
		}
		if err != nil {
			return fmt.Errorf("seek_data at %d: %w", off, err)
		}
		if start >= size {
			break
		}
		end, err := unix.Seek(sfd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek_hole at %d: %w", start, err)
		}
		end = min(end, size)
		if err := c.copyRange(ctx, start, end); err != nil {
			return err
		}
		off = end
	}
	if err := unix.Ftruncate(dfd, size); err != nil {
		return fmt.Errorf("truncate to %d: %w", size, err)
	}
	return nil
}

// copier copies byte ranges between two fds at equal offsets.
type copier struct {
	sfd, dfd int
	noCFR    bool   // copy_file_range refused once: use pread/pwrite
	buf      []byte // pread/pwrite buffer, allocated on first use
}

// copyRange copies [start, end) of sfd to the same range of dfd.
func (c *copier) copyRange(ctx context.Context, start, end int64) error {
	for off := start; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(end-off, chunk))
		var (
			done int
			err  error
		)
		if !c.noCFR {
			roff, woff := off, off
			done, err = unix.CopyFileRange(c.sfd, &roff, c.dfd, &woff, n, 0)
			if err != nil && copyUnsupported(err) {
				c.noCFR = true
				continue
			}
		} else {
			done, err = c.readWrite(off, n)
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("copy bytes %d-%d: %w", off, off+int64(n), err)
		}
		if done == 0 {
			return fmt.Errorf("copy bytes %d-%d: source shrank: %w", off, off+int64(n), io.ErrUnexpectedEOF)
		}
		off += int64(done)
	}
	return nil
}

// readWrite copies up to n bytes at off with pread/pwrite and returns how
// many it copied; 0 with a nil error means end of file.
func (c *copier) readWrite(off int64, n int) (int, error) {
	if c.buf == nil {
		c.buf = make([]byte, bufSize)
	}
	b := c.buf[:min(n, len(c.buf))]
	r, err := unix.Pread(c.sfd, b, off)
	if err != nil || r == 0 {
		return 0, err
	}
	for w := 0; w < r; {
		k, err := unix.Pwrite(c.dfd, b[w:r], off+int64(w))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		w += k
	}
	return r, nil
}
