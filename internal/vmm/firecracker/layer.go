package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// mergeLayer writes a Diff snapshot's memory file (layer: a sparse file the
// size of guest memory, holding the dirtied pages and holes elsewhere) onto
// the memory file it was taken on top of (base), as Firecracker's
// `snapshot-editor edit-memory rebase` does, syncs base and removes layer.
// Both were written by the VM's user (uid): a file of anyone else's, or a
// link, is refused. It returns the bytes merged. A merge interrupted midway
// can be run again: it only ever writes the layer's pages.
func mergeLayer(base, layer string, uid int) (int64, error) {
	l, err := openOwned(layer, os.O_RDONLY, uid)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	b, err := openOwned(base, os.O_WRONLY, uid)
	if err != nil {
		return 0, err
	}
	defer b.Close()
	ls, err := l.Stat()
	if err != nil {
		return 0, err
	}
	bs, err := b.Stat()
	if err != nil {
		return 0, err
	}
	if ls.Size() != bs.Size() {
		return 0, fmt.Errorf("memory layer %s is %d bytes, its base %d", layer, ls.Size(), bs.Size())
	}
	var merged int64
	buf := make([]byte, 1<<20)
	for off := int64(0); off < ls.Size(); {
		start, err := unix.Seek(int(l.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break // holes to the end
		}
		if err != nil {
			return merged, fmt.Errorf("memory layer %s: %w", layer, err)
		}
		end, err := unix.Seek(int(l.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return merged, fmt.Errorf("memory layer %s: %w", layer, err)
		}
		for at := start; at < end; {
			n, err := l.ReadAt(buf[:min(int64(len(buf)), end-at)], at)
			if n > 0 {
				if _, werr := b.WriteAt(buf[:n], at); werr != nil {
					return merged, fmt.Errorf("memory file %s: %w", base, werr)
				}
				at += int64(n)
				merged += int64(n)
			}
			if err != nil && !(errors.Is(err, io.EOF) && at >= end) {
				return merged, fmt.Errorf("memory layer %s: %w", layer, err)
			}
		}
		off = end
	}
	if err := b.Sync(); err != nil {
		return merged, err
	}
	if err := os.Remove(layer); err != nil {
		return merged, err
	}
	return merged, syncFile(filepath.Dir(layer))
}

// openOwned opens a regular file of uid's (any owner when uid is 0, the
// daemon's own VMs), never through a link.
func openOwned(path string, flag, uid int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); err == nil && ok && uid != 0 && int(sys.Uid) != uid {
		err = fmt.Errorf("%s belongs to uid %d, not the vm's %d", path, sys.Uid, uid)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
