// Package vmstore provides the filesystem fcm keeps VM disks, templates and
// checkpoints on, where a copy of a file costs no time and no space: the
// data dir itself when its filesystem can share extents (reflink: XFS,
// btrfs), else, on a host whose filesystem cannot (ext4), an XFS filesystem
// in a sparse loop file inside the data dir, created on first use, mounted
// again after a host restart and taken over as it is after a daemon restart.
//
// Open picks (ModeAuto) or is told which (ModeDir, ModeXFSLoop). The loop
// file is as large as the data dir's filesystem but takes only what XFS
// uses; it is mounted with discard, so space freed in the store goes back to
// the host, and the loop device does direct I/O, so pages are not cached
// twice. It needs mkfs.xfs and xfs_growfs (xfsprogs), losetup and mount.
package vmstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mode is fcm daemon --store.
type Mode string

const (
	// ModeAuto is ModeDir where the data dir's filesystem can reflink,
	// else ModeXFSLoop.
	ModeAuto Mode = "auto"
	// ModeDir keeps everything in the data dir itself; without reflinks
	// copies are sparse copies, which take time and space.
	ModeDir Mode = "dir"
	// ModeXFSLoop keeps VM disks in an XFS filesystem in a loop file.
	ModeXFSLoop Mode = "xfs-loop"
)

// ParseMode reads fcm daemon --store.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeDir, ModeXFSLoop:
		return m, nil
	}
	return "", fmt.Errorf("--store %q: want auto, dir or xfs-loop", s)
}

// File and mount point of the XFS store, in the data dir.
const (
	ImageFile  = "store.xfs"
	MountPoint = "store"
)

// Store is where VM disks live.
type Store struct {
	// Root holds the store's directories (vms, templates, ...): the data
	// dir itself, or the XFS store's mount point.
	Root string
	// Kind is ModeDir or ModeXFSLoop: what Open chose.
	Kind Mode
	// Reflink says whether copies within Root share extents.
	Reflink bool
	// Loop is the XFS store's loop device.
	Loop string
}

// Open makes the store of dataDir ready, as mode asks.
func Open(ctx context.Context, dataDir string, mode Mode, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	switch mode {
	case ModeDir:
		return &Store{Root: dataDir, Kind: ModeDir, Reflink: CanReflink(dataDir)}, nil
	case ModeAuto:
		if CanReflink(dataDir) {
			return &Store{Root: dataDir, Kind: ModeDir, Reflink: true}, nil
		}
		// A store made earlier is used even where it no longer would be
		// chosen: the VMs' disks are in it.
	case ModeXFSLoop:
	default:
		return nil, fmt.Errorf("store mode %q: want auto, dir or xfs-loop", mode)
	}
	s, err := openXFSLoop(ctx, dataDir, log)
	if err != nil {
		return nil, fmt.Errorf("the XFS store in %s: %w", filepath.Join(dataDir, ImageFile), err)
	}
	return s, nil
}

// openXFSLoop makes, attaches and mounts the XFS store as far as it is not
// yet, and grows it to the host filesystem's size.
func openXFSLoop(ctx context.Context, dataDir string, log *slog.Logger) (*Store, error) {
	img, mnt := filepath.Join(dataDir, ImageFile), filepath.Join(dataDir, MountPoint)
	var host unix.Statfs_t
	if err := unix.Statfs(dataDir, &host); err != nil {
		return nil, err
	}
	want := int64(host.Blocks) * host.Bsize
	fresh := false
	if _, err := os.Lstat(img); errors.Is(err, os.ErrNotExist) {
		if err := makeImage(ctx, img, want); err != nil {
			os.Remove(img)
			return nil, err
		}
		fresh = true
		log.Info("store: made an XFS filesystem in a sparse file, for reflinked VM disks", "file", img, "size_gib", want>>30)
	} else if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return nil, err
	}
	loop, err := attached(ctx, img)
	if err != nil {
		return nil, err
	}
	if loop == "" {
		out, err := run(ctx, "losetup", "--find", "--show", "--direct-io=on", img)
		if err != nil {
			return nil, err
		}
		loop = strings.TrimSpace(out)
	}
	mounted, err := mountedFrom(mnt)
	if err != nil {
		return nil, err
	}
	switch {
	case mounted == "":
		if _, err := run(ctx, "mount", "-t", "xfs", "-o", "discard,nosuid,nodev", loop, mnt); err != nil {
			return nil, err
		}
		if err := autoclear(loop); err != nil {
			return nil, err
		}
		if !fresh {
			log.Info("store: mounted the XFS store", "file", img, "loop", loop, "at", mnt)
		}
	case mounted != loop:
		return nil, fmt.Errorf("%s is mounted from %s, not from %s's loop device %s", mnt, mounted, img, loop)
	}
	s := &Store{Root: mnt, Kind: ModeXFSLoop, Loop: loop}
	if err := s.grow(ctx, img, want); err != nil {
		return nil, err
	}
	s.Reflink = CanReflink(mnt)
	if !s.Reflink {
		return nil, fmt.Errorf("the XFS store at %s cannot reflink (mkfs.xfs without reflink=1?)", mnt)
	}
	return s, nil
}

// makeImage makes a sparse file of size bytes with an XFS filesystem that
// can reflink.
func makeImage(ctx context.Context, img string, size int64) error {
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", "-L", "fcm-store", img)
	return err
}

// grow enlarges the store to size bytes (the host's filesystem grew).
func (s *Store) grow(ctx context.Context, img string, size int64) error {
	st, err := os.Stat(img)
	if err != nil {
		return err
	}
	if st.Size() >= size {
		return nil
	}
	if err := os.Truncate(img, size); err != nil {
		return err
	}
	if _, err := run(ctx, "losetup", "--set-capacity", s.Loop); err != nil {
		return err
	}
	_, err = run(ctx, "xfs_growfs", s.Root)
	return err
}

// attached is the loop device img is attached to, or "".
func attached(ctx context.Context, img string) (string, error) {
	out, err := run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", img)
	if err != nil {
		return "", err
	}
	if f := strings.Fields(out); len(f) > 0 {
		return f[0], nil
	}
	return "", nil
}

// mountedFrom is the device mounted at dir, or "" when dir is not a mount
// point (/proc/self/mountinfo).
func mountedFrom(dir string) (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 5 || unescape(f[4]) != dir {
			continue
		}
		for i, x := range f {
			if x == "-" && i+2 < len(f) {
				return f[i+2], nil
			}
		}
	}
	return "", nil
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and \.
func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// CanReflink says whether files in dir can share extents (FICLONE).
func CanReflink(dir string) bool {
	a, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return false
	}
	defer os.Remove(a.Name())
	defer a.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return false
	}
	b, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return false
	}
	defer os.Remove(b.Name())
	defer b.Close()
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// autoclear has loop device dev detach itself once nothing uses it (the
// store unmounted, or the mount namespace it was mounted in gone), as
// mount -o loop does: no loop device is left on a file that is gone. Set
// only while the store is mounted: the last close would clear it at once.
func autoclear(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), info); err != nil {
		return fmt.Errorf("%s: autoclear: %w", dev, err)
	}
	return nil
}
