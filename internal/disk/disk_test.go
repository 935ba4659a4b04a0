package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// source is a kind of base file a clone test starts from.
type source struct {
	name string
	// make creates the file at path and returns how many bytes of real
	// data it holds.
	make func(t *testing.T, path string) int64
}

var sources = []source{
	{"ext4-image", func(t *testing.T, path string) int64 {
		return int64(len(makeExt4Image(t, path)))
	}},
	{"raw-sparse", func(t *testing.T, path string) int64 {
		var n int64
		for _, c := range makeRawSparse(t, path) {
			n += int64(len(c.data))
		}
		return n
	}},
}

// checkClone asserts what every clone must be: byte-identical to src,
// mode 0600, same size, and still sparse: it allocates at least the real
// data, at most what src allocates (+4 MiB), and far below its size.
// It may allocate less than src: neither FICLONE on XFS nor SEEK_DATA
// carries over unwritten (fallocated, reads-as-zero) extents, such as the
// 32 MiB journal mkfs.ext4 leaves in an image.
func checkClone(t *testing.T, src, dst string, data int64) {
	t.Helper()
	sameContent(t, src, dst)
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("clone mode %v, want 0600", fi.Mode().Perm())
	}
	if fi.Size() != gib {
		t.Errorf("clone size %d, want %d", fi.Size(), gib)
	}
	srcAlloc, dstAlloc := allocated(t, src), allocated(t, dst)
	t.Logf("allocated: src %d MiB, clone %d MiB, apparent %d MiB", srcAlloc/mib, dstAlloc/mib, fi.Size()/mib)
	if dstAlloc < data {
		t.Errorf("clone allocates %d bytes, less than the %d bytes of data", dstAlloc, data)
	}
	if dstAlloc > srcAlloc+4*mib {
		t.Errorf("clone allocates %d bytes, source %d: not sparse", dstAlloc, srcAlloc)
	}
	if dstAlloc > fi.Size()/4 {
		t.Errorf("clone allocates %d of %d bytes: not sparse", dstAlloc, fi.Size())
	}
}

// TestClone_XFSReflink: on XFS with reflink, Clone uses FICLONE, the clone
// is identical, its extents are all shared with the source, and the
// filesystem's free space barely moves.
func TestClone_XFSReflink(t *testing.T) {
	mnt := mountFS(t, "xfs")
	for _, s := range sources {
		t.Run(s.name, func(t *testing.T) {
			src, dst := filepath.Join(mnt, s.name+".src"), filepath.Join(mnt, s.name+".clone")
			data := s.make(t, src)
			free := fsFree(t, mnt)

			m, err := Clone(t.Context(), src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if m != Reflink {
				t.Errorf("method %q, want %q", m, Reflink)
			}
			checkClone(t, src, dst, data)
			total, shared := sharedBytes(fiemap(t, dst))
			if total == 0 || shared != total {
				t.Errorf("clone extents: %d of %d bytes shared, want all", shared, total)
			}
			if _, shared := sharedBytes(fiemap(t, src)); shared < data {
				t.Errorf("source extents: %d bytes shared, want at least the %d bytes of data", shared, data)
			}
			if used := free - fsFree(t, mnt); used > 2*mib {
				t.Errorf("reflink clone used %d bytes of free space, want ~0", used)
			}
		})
	}
}

// TestClone_Ext4Sparse: on ext4 (no reflink), Clone makes a sparse copy that
// is identical, shares nothing, and allocates no more than the source.
func TestClone_Ext4Sparse(t *testing.T) {
	mnt := mountFS(t, "ext4")
	for _, s := range sources {
		t.Run(s.name, func(t *testing.T) {
			src, dst := filepath.Join(mnt, s.name+".src"), filepath.Join(mnt, s.name+".clone")
			data := s.make(t, src)

			m, err := Clone(t.Context(), src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if m != Sparse {
				t.Errorf("method %q, want %q", m, Sparse)
			}
			checkClone(t, src, dst, data)
			if _, shared := sharedBytes(fiemap(t, dst)); shared != 0 {
				t.Errorf("ext4 clone has %d shared bytes, want 0", shared)
			}
		})
	}
}

// TestClone_AcrossFilesystems: FICLONE and copy_file_range both refuse to
// cross from XFS to ext4 (EXDEV); Clone falls back to a sparse
// pread/pwrite copy that is still identical and sparse.
func TestClone_AcrossFilesystems(t *testing.T) {
	xfs, ext4 := mountFS(t, "xfs"), mountFS(t, "ext4")
	src, dst := filepath.Join(xfs, "src"), filepath.Join(ext4, "clone")
	var data int64
	for _, c := range makeRawSparse(t, src) {
		data += int64(len(c.data))
	}
	m, err := Clone(t.Context(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != Sparse {
		t.Errorf("method %q, want %q", m, Sparse)
	}
	checkClone(t, src, dst, data)
}

// TestCreate_GrowsExt4Image: Create clones a 1 GiB ext4 image and grows it to
// 2 GiB: the file is 2 GiB, e2fsck -fn passes, the filesystem (dumpe2fs -h)
// is ~2 GiB, /hello is intact, the clone is still sparse and the base is
// unchanged.
func TestCreate_GrowsExt4Image(t *testing.T) {
	for _, tc := range []struct {
		fs   string
		want Method
	}{{"xfs", Reflink}, {"ext4", Sparse}} {
		t.Run(tc.fs, func(t *testing.T) {
			mnt := mountFS(t, tc.fs)
			base, dst := filepath.Join(mnt, "base-rootfs.img"), filepath.Join(mnt, "vm.img")
			hello := makeExt4Image(t, base)
			baseSum := fileSHA256(t, base)

			m, err := Create(t.Context(), base, dst, 2*gib)
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Errorf("method %q, want %q", m, tc.want)
			}
			fi, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != 2*gib {
				t.Errorf("size %d, want %d", fi.Size(), 2*gib)
			}
			run(t, "e2fsck", "-fn", dst)
			if got := ext4Size(t, dst); got < 2*gib-2*gib/100 || got > 2*gib {
				t.Errorf("filesystem is %d bytes, want ~%d", got, 2*gib)
			}
			if got := readHello(t, dst); !bytes.Equal(got, hello) {
				t.Errorf("/hello after Create: %d bytes, differs from the %d written", len(got), len(hello))
			}
			if a := allocated(t, dst); a > 2*gib/4 {
				t.Errorf("grown image allocates %d bytes: not sparse", a)
			}
			if got := fileSHA256(t, base); got != baseSum {
				t.Errorf("base changed by Create: sha256 %s, was %s", got, baseSum)
			}
			if got := ext4Size(t, base); got != gib {
				t.Errorf("base filesystem is %d bytes, was %d", got, gib)
			}
		})
	}
}

// TestClone_ExistingDst: Clone onto an existing file fails with ErrExist and
// leaves that file's content and mode alone.
func TestClone_ExistingDst(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	makeRawSparse(t, src)
	if err := os.WriteFile(dst, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Clone(t.Context(), src, dst)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Clone onto existing dst: %v, want ErrExist", err)
	}
	if !strings.Contains(err.Error(), dst) {
		t.Errorf("error %q does not name %s", err, dst)
	}
	got, rerr := os.ReadFile(dst)
	if rerr != nil || string(got) != "keep me" {
		t.Errorf("existing dst now %q (%v), want %q", got, rerr, "keep me")
	}
	if fi, _ := os.Stat(dst); fi == nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("existing dst mode changed: %v", fi)
	}
}

// TestClone_Failures: Clone of a missing source, of a directory, or with a
// cancelled context fails with the right error and leaves no dst.
func TestClone_Failures(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeRawSparse(t, src)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		src  string
		is   error  // errors.Is target, or nil
		msg  string // substring of the error
	}{
		{"missing-src", t.Context(), filepath.Join(dir, "nope"), fs.ErrNotExist, "nope"},
		{"src-is-dir", t.Context(), dir, nil, "not a regular file"},
		{"cancelled", cancelled, src, context.Canceled, "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(dir, tc.name+".clone")
			m, err := Clone(tc.ctx, tc.src, dst)
			if err == nil {
				t.Fatalf("Clone succeeded (%s), want error", m)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want errors.Is %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if _, serr := os.Lstat(dst); !errors.Is(serr, fs.ErrNotExist) {
				t.Errorf("dst left behind after failed Clone (stat: %v)", serr)
			}
		})
	}
}

// TestGrow_Errors: Grow to a smaller size fails and changes nothing; Grow of
// a missing file fails with ErrNotExist; Grow of a non-ext4 file fails with
// e2fsck's output and restores the file's size and content.
func TestGrow_Errors(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()

	img := filepath.Join(dir, "img")
	makeExt4Image(t, img)
	sum := fileSHA256(t, img)
	err := Grow(t.Context(), img, 512*mib)
	if err == nil || !strings.Contains(err.Error(), "smaller") {
		t.Errorf("Grow to a smaller size: %v, want a 'smaller' error", err)
	}
	if fileSHA256(t, img) != sum {
		t.Error("failed Grow changed the image")
	}
	run(t, "e2fsck", "-fn", img)

	err = Grow(t.Context(), filepath.Join(dir, "nope"), gib)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Grow of missing file: %v, want ErrNotExist", err)
	}

	raw := filepath.Join(dir, "raw")
	junk := randBytes(7, int(8*mib))
	if err := os.WriteFile(raw, junk, 0o644); err != nil {
		t.Fatal(err)
	}
	err = Grow(t.Context(), raw, gib)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), "e2fsck") || !strings.Contains(err.Error(), raw) {
		t.Errorf("Grow of raw data: %v, want a wrapped e2fsck exit error naming %s", err, raw)
	} else {
		t.Logf("Grow of raw data: %v", err)
	}
	if got, _ := os.ReadFile(raw); !bytes.Equal(got, junk) {
		t.Errorf("failed Grow left raw file at %d bytes / changed, want it restored", len(got))
	}
}

// TestGrow_SameSize: growing to the current size is allowed and leaves a
// clean filesystem of the same size with its data.
func TestGrow_SameSize(t *testing.T) {
	requireRoot(t)
	img := filepath.Join(t.TempDir(), "img")
	hello := makeExt4Image(t, img)
	if err := Grow(t.Context(), img, gib); err != nil {
		t.Fatal(err)
	}
	run(t, "e2fsck", "-fn", img)
	if got := ext4Size(t, img); got != gib {
		t.Errorf("filesystem is %d bytes, want %d", got, gib)
	}
	if got := readHello(t, img); !bytes.Equal(got, hello) {
		t.Error("/hello changed")
	}
}

// TestCreate_Errors: Create with a non-ext4 source fails at Grow (e2fsck) and
// leaves no dst; Create smaller than the base or onto an existing file fails,
// the latter leaving the file untouched.
func TestCreate_Errors(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	if err := os.WriteFile(raw, randBytes(3, int(8*mib)), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base")
	makeExt4Image(t, base)

	dst := filepath.Join(dir, "from-raw")
	if _, err := Create(t.Context(), raw, dst, 2*gib); err == nil || !strings.Contains(err.Error(), "e2fsck") {
		t.Errorf("Create from raw data: %v, want an e2fsck error", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dst left behind after failed Create (stat: %v)", err)
	}

	dst = filepath.Join(dir, "too-small")
	if _, err := Create(t.Context(), base, dst, gib/2); err == nil {
		t.Error("Create smaller than the base succeeded")
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dst left behind after failed Create (stat: %v)", err)
	}

	dst = filepath.Join(dir, "existing")
	if err := os.WriteFile(dst, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(t.Context(), base, dst, 2*gib); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create onto existing file: %v, want ErrExist", err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "keep me" {
		t.Errorf("existing dst now %q", got)
	}
}

// TestAllocated: a 1 GiB sparse file with 1 MiB written allocates about
// 1 MiB; a missing file is ErrNotExist.
func TestAllocated(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(5, int(mib)), 100*mib); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(gib); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if a := allocated(t, p); a < mib || a > 2*mib {
		t.Errorf("Allocated = %d, want ~1 MiB", a)
	}
	if _, err := Allocated(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Allocated of missing file: %v, want ErrNotExist", err)
	}
}

// TestClassify is a table test of the pure decisions: which e2fsck exit
// codes are success, which errors send Clone to the sparse copy and the
// sparse copy to pread/pwrite, and how tool output is put into errors.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		code int
		ok   bool
	}{{0, true}, {1, true}, {2, false}, {4, false}, {8, false}, {-1, false}} {
		if got := fsckOK(tc.code); got != tc.ok {
			t.Errorf("fsckOK(%d) = %v, want %v", tc.code, got, tc.ok)
		}
	}
	for _, tc := range []struct {
		err             error
		clone, copyFall bool
	}{
		{unix.EOPNOTSUPP, true, true},
		{unix.ENOTTY, true, false},
		{unix.EXDEV, true, true},
		{unix.EINVAL, true, true},
		{unix.ENOSYS, true, true},
		{fmt.Errorf("wrapped: %w", unix.EXDEV), true, true},
		{unix.EBADF, false, true},
		{unix.EIO, false, false},
		{unix.ENOSPC, false, false},
		{unix.EPERM, false, false},
		{errors.New("other"), false, false},
	} {
		if got := cloneUnsupported(tc.err); got != tc.clone {
			t.Errorf("cloneUnsupported(%v) = %v, want %v", tc.err, got, tc.clone)
		}
		if got := copyUnsupported(tc.err); got != tc.copyFall {
			t.Errorf("copyUnsupported(%v) = %v, want %v", tc.err, got, tc.copyFall)
		}
	}
	long := strings.Repeat("x", maxOutput+10)
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"\n\n", ""},
		{"one line\n", "one line"},
		{"e2fsck: Bad magic\n\n  The superblock could not be read \n", "e2fsck: Bad magic; The superblock could not be read"},
		{long, long[:maxOutput] + "..."},
	} {
		if got := toolOutput([]byte(tc.in)); got != tc.want {
			t.Errorf("toolOutput(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
