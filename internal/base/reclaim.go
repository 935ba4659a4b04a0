package base

import (
	"os"
	"path/filepath"
	"syscall"
)

// Reclaimable is the host disk deleting dir (a retired base) gives back: the
// bytes allocated to its files that have no other link. A base's files are
// hard links where they could be: while the image directory a build wrote (or
// another base) still links one, deleting the base frees none of it.
func Reclaimable(dir string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Lstat(filepath.Join(dir, e.Name()), &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		if st.Nlink == 1 {
			n += st.Blocks * 512
		}
	}
	return n
}
