package vmstore

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOpen_Ext4: on an ext4 data dir (its own loop mount), the store is an
// XFS filesystem in a sparse file inside it: made on first use, where a copy
// of 64 MiB by reflink grows the host's used space by less than 1 MiB; taken
// over as it is by a second Open (a daemon restart); mounted again after its
// mount and loop device are gone (a host restart), its files there.
func TestOpen_Ext4(t *testing.T) {
	dataDir := loopMount(t, "ext4", 4<<30)
	ctx := context.Background()
	if CanReflink(dataDir) {
		t.Fatal("ext4 can reflink?")
	}
	if s, err := Open(ctx, dataDir, ModeDir, nil); err != nil || s.Root != dataDir || s.Reflink {
		t.Fatalf("--store dir on ext4: %+v, %v", s, err)
	}
	s, err := Open(ctx, dataDir, ModeAuto, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { detach(t, s) })
	if s.Kind != ModeXFSLoop || s.Root != filepath.Join(dataDir, MountPoint) || !s.Reflink || s.Loop == "" {
		t.Fatalf("--store auto on ext4: %+v", s)
	}
	if dev, _ := mountedFrom(s.Root); dev != s.Loop {
		t.Fatalf("%s is mounted from %q, want %s", s.Root, dev, s.Loop)
	}
	img, _ := os.Stat(filepath.Join(dataDir, ImageFile))
	t.Logf("store %s: %d GiB file, %d MiB on the host", s.Loop, img.Size()>>30, allocated(t, filepath.Join(dataDir, ImageFile))>>20)

	// A 64 MiB disk and its reflinked copy.
	data := bytes.Repeat([]byte("fcm store "), 64<<20/10)
	disk := filepath.Join(s.Root, "data.img")
	if err := os.WriteFile(disk, data, 0o600); err != nil {
		t.Fatal(err)
	}
	syncFS(t, s.Root)
	before := used(t, dataDir)
	copyOf := filepath.Join(s.Root, "checkpoint.img")
	reflink(t, disk, copyOf)
	syncFS(t, s.Root)
	if grew := used(t, dataDir) - before; grew >= 1<<20 {
		t.Errorf("a reflinked copy of 64 MiB grew the host's used space by %d KiB", grew>>10)
	}

	// A daemon restart: the store is taken over as it is.
	again, err := Open(ctx, dataDir, ModeAuto, nil)
	if err != nil || again.Loop != s.Loop || again.Root != s.Root {
		t.Fatalf("a second Open: %+v, %v; the first: %+v", again, err, s)
	}
	// Unmounted, the loop device detaches itself (autoclear): none is left
	// on a file that goes away. Then a host restart: no mount, no loop.
	sh(t, "umount", s.Root)
	for i := 0; ; i++ {
		out, _ := exec.Command("losetup", "-n", "-O", "NAME", "-j", filepath.Join(dataDir, ImageFile)).Output()
		if len(bytes.TrimSpace(out)) == 0 {
			break
		}
		if i == 50 {
			t.Fatalf("the store's loop device %s is still attached after its unmount", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s, err = Open(ctx, dataDir, ModeAuto, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(copyOf); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after the store was mounted again, the copy: %v (%d bytes)", err, len(got))
	}
}

// TestOpen_XFS: on an XFS data dir, the data dir itself is the store.
func TestOpen_XFS(t *testing.T) {
	dataDir := loopMount(t, "xfs", 1<<30)
	s, err := Open(context.Background(), dataDir, ModeAuto, nil)
	if err != nil || s.Kind != ModeDir || s.Root != dataDir || !s.Reflink {
		t.Fatalf("--store auto on XFS: %+v, %v", s, err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, ImageFile)); err == nil {
		t.Error("an XFS data dir got a loop store")
	}
	if _, err := ParseMode("zfs"); err == nil {
		t.Error("--store zfs accepted")
	}
}

// loopMount mounts a new filesystem of fstype and size (a sparse file) on
// a temporary directory.
func loopMount(t *testing.T, fstype string, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	mkfs := []string{"mkfs.ext4", "-q", "-F", "-m", "0", backing}
	if fstype == "xfs" {
		mkfs = []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing}
	}
	sh(t, mkfs...)
	dir := t.TempDir()
	sh(t, "mount", "-o", "loop", backing, dir)
	t.Cleanup(func() { sh(t, "umount", dir) })
	return dir
}

// detach unmounts the store and frees its loop device, as a host restart.
func detach(t *testing.T, s *Store) {
	t.Helper()
	if dev, _ := mountedFrom(s.Root); dev != "" {
		sh(t, "umount", s.Root)
	}
	if out, _ := exec.Command("losetup", "--noheadings", "--output", "NAME").Output(); bytes.Contains(out, []byte(s.Loop)) {
		exec.Command("losetup", "-d", s.Loop).Run()
	}
}

func reflink(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		t.Fatal(err)
	}
}

func used(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func syncFS(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unix.Syncfs(int(f.Fd()))
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}
