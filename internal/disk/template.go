package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// DataLabel is the filesystem label of a VM's own disk: the initrd finds it by
// this label and mounts its upper/ and work/ as the writable layer of the root.
const DataLabel = "fcm-data"

// templateVersion changes whenever a template is laid out differently, so
// templates made the old way are not reused.
const templateVersion = "v1"

// Templates makes and keeps empty data disks, one per size, in a directory:
// a VM's disk is a Clone of one (a reflink, or a copy of its few hundred KiB of
// metadata), never a fresh mkfs or a copy of the base.
type Templates struct {
	Dir string

	mu    sync.Mutex
	sizes map[int64]*sync.Mutex
}

// Path is where the template for free bytes is kept.
func (t *Templates) Path(free int64) string {
	return filepath.Join(t.Dir, fmt.Sprintf("data-%d-%s.img", free, templateVersion))
}

// Get returns the template with at least free bytes free for files, making it
// when there is none yet (tmp and rename: never half made).
func (t *Templates) Get(ctx context.Context, free int64) (string, error) {
	path := t.Path(free)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	t.mu.Lock()
	if t.sizes == nil {
		t.sizes = map[int64]*sync.Mutex{}
	}
	l := t.sizes[free]
	if l == nil {
		l = &sync.Mutex{}
		t.sizes[free] = l
	}
	t.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(t.Dir, ".data-*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := MakeData(ctx, tmp.Name(), free); err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// MakeData formats path as an empty data disk with at least free bytes free:
// ext4 labelled DataLabel, with the overlay's upper/ and work/ directories,
// inode tables marked zeroed and the journal left to be initialized lazily, so
// the image holds about 200 KiB of data whatever its size. The filesystem's
// own overhead (inode tables, journal) is added on top of free, so a VM made
// with --disk 2G has 2 GiB for its files.
func MakeData(ctx context.Context, path string, free int64) error {
	skel, err := os.MkdirTemp("", "fcm-data-skel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(skel)
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(skel, d), 0o755); err != nil {
			return err
		}
		// mkdir honours the umask; the upper dir's mode becomes that of /.
		if err := os.Chmod(filepath.Join(skel, d), 0o755); err != nil {
			return err
		}
	}
	size := free
	for range 4 {
		if err := mkfsData(ctx, path, size, skel); err != nil {
			return err
		}
		got, err := freeBytes(ctx, path)
		if err != nil {
			return err
		}
		if got >= free {
			return nil
		}
		size += (free - got + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return fmt.Errorf("data disk %s: cannot make %d bytes free", path, free)
}

func mkfsData(ctx context.Context, path string, size int64, skel string) error {
	if err := os.Truncate(path, 0); err != nil {
		return err
	}
	if err := os.Truncate(path, size); err != nil {
		return err
	}
	// -m 0: no blocks reserved for root, the whole disk is the user's.
	// ^resize_inode: no blocks kept for growing the filesystem online.
	// lazy_journal_init: the journal is not written (a hole reads as zeros).
	// The default discard on a regular file punches holes, so mke2fs marks the
	// inode tables zeroed and the guest's lazyinit has nothing to write.
	_, err := runTool(ctx, "mkfs.ext4", "-q", "-F", "-L", DataLabel, "-m", "0", "-O", "^resize_inode",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", skel, path)
	return err
}

// freeBytes reads an ext4 image's free blocks times its block size.
func freeBytes(ctx context.Context, path string) (int64, error) {
	bin, err := toolPath("dumpe2fs")
	if err != nil {
		return 0, err
	}
	out, err := runOutput(ctx, bin, "-h", path)
	if err != nil {
		return 0, err
	}
	var freeBlocks, blockSize int64
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "Free blocks":
			freeBlocks = n
		case "Block size":
			blockSize = n
		}
	}
	if freeBlocks == 0 || blockSize == 0 {
		return 0, fmt.Errorf("dumpe2fs -h %s: no free blocks or block size", path)
	}
	return freeBlocks * blockSize, nil
}

// runOutput runs a tool and returns its standard output.
func runOutput(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, toolOutput([]byte(stderr.String())))
	}
	return string(out), nil
}

// Clean removes what an interrupted Get left behind.
func (t *Templates) Clean() error {
	tmps, _ := filepath.Glob(filepath.Join(t.Dir, ".data-*.tmp"))
	var errs []error
	for _, f := range tmps {
		errs = append(errs, os.Remove(f))
	}
	return errors.Join(errs...)
}
