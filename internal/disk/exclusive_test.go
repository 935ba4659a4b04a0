package disk

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExclusive: on XFS a reflinked copy holds no bytes of its own, nor does
// its source, until one is written: then that one holds what was written.
// On ext4 (no sharing) a file holds what it takes.
func TestExclusive(t *testing.T) {
	mnt := mountFS(t, "xfs")
	src, dst := filepath.Join(mnt, "data.img"), filepath.Join(mnt, "copy.img")
	if err := os.WriteFile(src, randBytes(1, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := Exclusive(src); err != nil || n != 8<<20 {
		t.Fatalf("before the copy: %d bytes of its own (%v), want 8 MiB", n, err)
	}
	if m, err := Clone(t.Context(), src, dst); err != nil || m != Reflink {
		t.Fatalf("clone: %s, %v", m, err)
	}
	for _, p := range []string{src, dst} {
		if n, err := Exclusive(p); err != nil || n != 0 {
			t.Errorf("%s after a reflink: %d bytes of its own (%v), want 0", filepath.Base(p), n, err)
		}
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(2, 1<<20), 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n, err := Exclusive(dst); err != nil || n != 1<<20 {
		t.Errorf("the copy after 1 MiB written: %d bytes of its own (%v), want 1 MiB", n, err)
	}

	ext := mountFS(t, "ext4")
	plain := filepath.Join(ext, "data.img")
	if err := os.WriteFile(plain, randBytes(3, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := Exclusive(plain); err != nil || n != 4<<20 {
		t.Errorf("an ext4 file: %d bytes of its own (%v), want 4 MiB", n, err)
	}
}
