package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30

	// FIEMAP's ioctl, flags and sizes are in exclusive.go.

	xfsMagic  = 0x58465342
	ext4Magic = 0xEF53
)

// requireRoot fails (never skips) a test that needs loop devices and mounts.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test must run as root: it makes loop devices and mounts")
	}
}

// run runs a command and fails the test if it does not exit 0.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mountFS makes a 3 GiB sparse file in a temp dir, formats it as fstype
// ("ext4" or "xfs" with reflink), attaches it to a loop device and mounts it.
// Cleanups unmount and detach it, also when the test fails.
func mountFS(t *testing.T, fstype string) string {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir() // registered first, so removed after the unmount
	backing := filepath.Join(dir, "backing.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 3*gib); err != nil {
		t.Fatal(err)
	}
	var magic int64
	switch fstype {
	case "ext4":
		run(t, "mkfs.ext4", "-q", "-F", backing)
		magic = ext4Magic
	case "xfs":
		run(t, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing)
		magic = xfsMagic
	default:
		t.Fatalf("unknown fstype %q", fstype)
	}
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", backing))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", fstype, dev, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != magic {
		t.Fatalf("%s: filesystem magic %#x, want %#x (%s)", mnt, st.Type, magic, fstype)
	}
	return mnt
}

// randBytes returns n reproducible pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1, 2, 3})
	_, _ = r.Read(b)
	return b
}

// makeExt4Image makes a sparse 1 GiB ext4 image at path holding a file
// /hello of 16 MiB of random bytes, which it returns.
func makeExt4Image(t *testing.T, path string) []byte {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, gib); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", path)
	hello := randBytes(1, int(16*mib))
	local := filepath.Join(t.TempDir(), "hello.bin")
	if err := os.WriteFile(local, hello, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "debugfs", "-w", "-R", "write "+local+" /hello", path)
	if got := readHello(t, path); !bytes.Equal(got, hello) {
		t.Fatalf("debugfs write into %s did not take (%d bytes read back)", path, len(got))
	}
	return hello
}

// readHello returns /hello from the ext4 image at path, via debugfs.
func readHello(t *testing.T, path string) []byte {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", "cat /hello", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs cat /hello %s: %v\n%s", path, err, stderr.Bytes())
	}
	return out
}

// rawChunk is data written at an offset of a raw sparse file.
type rawChunk struct {
	off  int64
	data []byte
}

// makeRawSparse makes a sparse 1 GiB file at path with random data at
// 0, 300 MiB+123 (unaligned) and 900 MiB, and a hole at the end.
func makeRawSparse(t *testing.T, path string) []rawChunk {
	t.Helper()
	chunks := []rawChunk{
		{0, randBytes(10, int(mib))},
		{300*mib + 123, randBytes(11, 5000)},
		{900 * mib, randBytes(12, int(mib))},
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range chunks {
		if _, err := f.WriteAt(c.data, c.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(gib); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return chunks
}

// sameContent fails the test unless files a and b are byte-identical. It
// reads both whole files with O_DIRECT: buffered reads of the holes of a
// 1 GiB file fill 1 GiB of fresh page cache, which on this kind of VM can
// take several seconds per file.
func sameContent(t *testing.T, a, b string) {
	t.Helper()
	const bs = 8 << 20
	fa, fb := openDirect(t, a), openDirect(t, b)
	ba, bb := directBuf(t, bs), directBuf(t, bs)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			i := 0
			for i < min(na, nb) && ba[i] == bb[i] {
				i++
			}
			t.Fatalf("%s and %s differ at byte %d", a, b, off+int64(i))
		}
		off += int64(na)
		aEnd := ea == io.EOF || ea == io.ErrUnexpectedEOF
		bEnd := eb == io.EOF || eb == io.ErrUnexpectedEOF
		switch {
		case aEnd && bEnd:
			return
		case ea != nil || eb != nil:
			t.Fatalf("reading %s / %s at byte %d: %v / %v", a, b, off, ea, eb)
		}
	}
}

// openDirect opens path for reading with O_DIRECT, closed at cleanup.
func openDirect(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// directBuf returns a page-aligned buffer of n bytes for O_DIRECT reads,
// unmapped at cleanup.
func directBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(b) })
	return b
}

// fileSHA256 returns the hex SHA-256 of the file at path (read with
// O_DIRECT, see sameContent).
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, buf := openDirect(t, path), directBuf(t, 8<<20)
	h := sha256.New()
	for {
		n, err := io.ReadFull(f, buf)
		h.Write(buf[:n])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Sprintf("%x", h.Sum(nil))
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
	}
}

// extent is one FIEMAP extent.
type extent struct {
	logical, physical, length uint64
	flags                     uint32
}

// fiemap returns the extents of the file at path (FS_IOC_FIEMAP, synced).
func fiemap(t *testing.T, path string) []extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 128
	buf := make([]byte, fiemapHeader+n*fiemapExtentSize)
	ne := binary.NativeEndian
	var exts []extent
	for start := uint64(0); ; {
		clear(buf)
		ne.PutUint64(buf[0:], start)
		ne.PutUint64(buf[8:], ^uint64(0)-start)
		ne.PutUint32(buf[16:], fiemapFlagSync)
		ne.PutUint32(buf[24:], n)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			t.Fatalf("fiemap %s: %v", path, errno)
		}
		mapped := int(ne.Uint32(buf[20:]))
		if mapped == 0 {
			return exts
		}
		for i := range mapped {
			b := buf[fiemapHeader+i*fiemapExtentSize:]
			e := extent{
				logical:  ne.Uint64(b[0:]),
				physical: ne.Uint64(b[8:]),
				length:   ne.Uint64(b[16:]),
				flags:    ne.Uint32(b[40:]),
			}
			exts = append(exts, e)
			if e.flags&fiemapExtentLast != 0 {
				return exts
			}
		}
		last := exts[len(exts)-1]
		start = last.logical + last.length
	}
}

// sharedBytes sums the length of exts, and of those flagged shared.
func sharedBytes(exts []extent) (total, shared int64) {
	for _, e := range exts {
		total += int64(e.length)
		if e.flags&fiemapExtentShared != 0 {
			shared += int64(e.length)
		}
	}
	return total, shared
}

// allocated is Allocated that fails the test on error.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	n, err := Allocated(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fsFree returns the free bytes of the filesystem holding path.
func fsFree(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}

// ext4Size returns block count × block size from `dumpe2fs -h`.
func ext4Size(t *testing.T, path string) int64 {
	t.Helper()
	out := run(t, "dumpe2fs", "-h", path)
	var count, size int64 = -1, -1
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch strings.TrimSpace(k) {
		case "Block count":
			if err != nil {
				t.Fatalf("dumpe2fs %s: block count %q: %v", path, v, err)
			}
			count = n
		case "Block size":
			if err != nil {
				t.Fatalf("dumpe2fs %s: block size %q: %v", path, v, err)
			}
			size = n
		}
	}
	if count < 0 || size < 0 {
		t.Fatalf("dumpe2fs -h %s: no block count/size in:\n%s", path, out)
	}
	return count * size
}
