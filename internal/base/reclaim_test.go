package base_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fcmhost/fcm/internal/base"
)

func TestReclaimable(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	data := make([]byte, 64<<10)
	for _, f := range []string{"own", "linked"} {
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(dir, "linked"), filepath.Join(other, "linked")); err != nil {
		t.Fatal(err)
	}
	// Only "own" goes with the directory: at least its 64 KiB, not both files'.
	if got := base.Reclaimable(dir); got < 64<<10 || got >= 128<<10 {
		t.Errorf("Reclaimable = %d, want the unlinked file's 64 KiB", got)
	}
	if got := base.Reclaimable(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("Reclaimable of a missing dir = %d", got)
	}
}
