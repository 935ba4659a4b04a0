package disk

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestTemplates_DataDisk(t *testing.T) {
	dir := t.TempDir()
	tpl := &Templates{Dir: dir}
	const free = 2 << 30
	path, err := tpl.Get(context.Background(), free)
	if err != nil {
		t.Fatal(err)
	}
	got, err := freeBytes(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if got < free || got > free+free/50 {
		t.Errorf("template has %d bytes free, want %d (and at most 2%% more)", got, free)
	}
	if alloc := allocated(t, path); alloc > 1<<20 {
		t.Errorf("template takes %d bytes of host disk, want under 1 MiB", alloc)
	}
	info := run(t, "dumpe2fs", "-h", path)
	for _, want := range []string{"Filesystem volume name:   " + DataLabel, "Reserved block count:     0"} {
		if !strings.Contains(info, want) {
			t.Errorf("dumpe2fs -h lacks %q:\n%s", want, info)
		}
	}
	// Every group's inode table is marked zeroed: the guest writes none of it.
	groups := run(t, "dumpe2fs", path)
	if n, z := len(regexp.MustCompile(`(?m)^Group [0-9]+:`).FindAllString(groups, -1)), strings.Count(groups, "ITABLE_ZEROED"); n == 0 || z != n {
		t.Errorf("%d of %d groups have ITABLE_ZEROED", z, n)
	}
	for _, d := range []string{"upper", "work"} {
		out := run(t, "debugfs", "-R", "stat /"+d, path)
		if !strings.Contains(out, "Type: directory") || !strings.Contains(out, "Mode:  0755") {
			t.Errorf("/%s in the template: %s", d, out)
		}
	}
	// A second Get reuses the file.
	st1, _ := os.Stat(path)
	again, err := tpl.Get(context.Background(), free)
	if err != nil || again != path {
		t.Fatalf("second Get: %s, %v", again, err)
	}
	st2, _ := os.Stat(again)
	if !os.SameFile(st1, st2) {
		t.Error("second Get made the template again")
	}
	leftovers, _ := os.ReadDir(dir)
	if len(leftovers) != 1 {
		t.Errorf("template dir holds %d entries, want only the template", len(leftovers))
	}
}
