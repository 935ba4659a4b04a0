package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// readCPIO parses a newc archive into name -> (mode, data).
func readCPIO(t *testing.T, b []byte) map[string]struct {
	mode uint32
	data []byte
} {
	t.Helper()
	out := map[string]struct {
		mode uint32
		data []byte
	}{}
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; off < len(b); {
		h := string(b[off : off+110])
		if h[:6] != "070701" {
			t.Fatalf("bad magic at %d: %q", off, h[:6])
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+nameSize-1])
		dataStart := align(off + 110 + nameSize)
		data := b[dataStart : dataStart+size]
		off = align(dataStart + size)
		if name == "TRAILER!!!" {
			break
		}
		out[name] = struct {
			mode uint32
			data []byte
		}{uint32(mode), data}
	}
	return out
}

func TestCPIO(t *testing.T) {
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	c.Dir("bin")
	c.File("bin/busybox", 0o755, []byte("odd-sized!"))
	c.Symlink("bin/sh", "busybox")
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, []byte("#!/bin/sh\n"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	got := readCPIO(t, buf.Bytes())
	want := map[string]uint32{"bin": 0o40755, "bin/busybox": 0o100755, "bin/sh": 0o120777, "dev/console": 0o20600, "init": 0o100755}
	for name, mode := range want {
		if got[name].mode != mode {
			t.Errorf("%s mode %o, want %o", name, got[name].mode, mode)
		}
	}
	if string(got["bin/busybox"].data) != "odd-sized!" || string(got["bin/sh"].data) != "busybox" {
		t.Errorf("contents wrong: %q %q", got["bin/busybox"].data, got["bin/sh"].data)
	}
	// And GNU cpio reads it as the kernel would.
	cmd := exec.Command("cpio", "-t")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "bin/busybox") || !strings.Contains(string(out), "dev/console") {
		t.Errorf("cpio -t: %v: %s", err, out)
	}
}

// TestExtractVmlinux hides an ELF executable (this test binary) after junk,
// compressed as Debian's kernels are (LZ4 legacy) and as older ones were (gzip).
func TestExtractVmlinux(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	elfBytes, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if !validELF(elfBytes) {
		t.Fatal("the test binary is not an x86-64 ET_EXEC; cannot use it as a kernel stand-in")
	}
	setup := bytes.Repeat([]byte{0xeb, 0x02, 0x21, 0x4c}, 1000) // junk, including a false lz4 magic prefix

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elfBytes)
	zw.Close()

	lz4Path := filepath.Join(t.TempDir(), "payload.lz4")
	cmd := exec.Command("lz4", "-l", "-q", "-f", "-", lz4Path)
	cmd.Stdin = bytes.NewReader(elfBytes)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("lz4: %v: %s", err, out)
	}
	lz, err := os.ReadFile(lz4Path)
	if err != nil {
		t.Fatal(err)
	}
	for name, payload := range map[string][]byte{"gzip": gz.Bytes(), "lz4": lz} {
		t.Run(name, func(t *testing.T) {
			bz := append(append(append([]byte(nil), setup...), payload...), 0x10, 0x20, 0x30, 0x40) // trailing size word
			got, err := extractVmlinux(context.Background(), bz)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, elfBytes) {
				t.Fatalf("extracted %d bytes, want the %d-byte ELF", len(got), len(elfBytes))
			}
		})
	}
	if _, err := extractVmlinux(context.Background(), setup); err == nil {
		t.Error("no error for a bzImage without a kernel")
	}
}

// fakeModule compiles an object whose .modinfo says depends=deps, as a .ko does.
func fakeModule(t *testing.T, dir, name string, deps ...string) {
	t.Helper()
	info := "license=GPL\\0depends=" + strings.Join(deps, ",") + "\\0name=" + name
	src := `static const char m[] __attribute__((section(".modinfo"), used)) = "` + info + `";` + "\n"
	out := filepath.Join(dir, "kernel", name+".ko")
	os.MkdirAll(filepath.Dir(out), 0o755)
	cmd := exec.Command("gcc", "-c", "-x", "c", "-", "-o", out)
	cmd.Stdin = strings.NewReader(src)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, b)
	}
}

func TestModuleOrder(t *testing.T) {
	dir := t.TempDir()
	fakeModule(t, dir, "virtio")
	fakeModule(t, dir, "virtio_ring")
	fakeModule(t, dir, "virtio_mmio", "virtio", "virtio_ring")
	fakeModule(t, dir, "failover")
	fakeModule(t, dir, "net_failover", "failover")
	fakeModule(t, dir, "virtio_net", "net_failover", "virtio", "virtio_ring")
	fakeModule(t, dir, "virtio-rng", "virtio", "virtio_ring")
	fakeModule(t, dir, "unused")

	order, err := moduleOrder(dir, []string{"virtio_mmio", "virtio_net", "virtio_rng"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[strings.TrimSuffix(filepath.Base(p), ".ko")] = i
	}
	if len(order) != 7 {
		t.Fatalf("order %v: want the 7 needed modules once each", order)
	}
	for mod, deps := range map[string][]string{
		"virtio_mmio": {"virtio", "virtio_ring"}, "virtio_net": {"net_failover", "virtio"},
		"net_failover": {"failover"}, "virtio-rng": {"virtio_ring"},
	} {
		for _, d := range deps {
			if pos[d] > pos[mod] {
				t.Errorf("%s loads after %s: %v", d, mod, order)
			}
		}
	}
	if slices.Contains(order, "kernel/unused.ko") {
		t.Error("unused module included")
	}
	if _, err := moduleOrder(dir, []string{"virtio_blk"}); err == nil || !strings.Contains(err.Error(), "virtio_blk") {
		t.Errorf("missing module: err = %v", err)
	}
}

func TestHashOf_SeparatesParts(t *testing.T) {
	if hashOf("ab", "c") == hashOf("a", "bc") {
		t.Error("hashOf joins parts ambiguously")
	}
	if _, err := hex.DecodeString(hashOf("x")); err != nil {
		t.Error(err)
	}
}

func TestBuild_RefusesBadVariantBeforeWork(t *testing.T) {
	out := t.TempDir()
	_, err := Build(context.Background(), Options{Variant: "huge", OutDir: out, CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `unknown image variant "huge"`) {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("out dir not empty after a refused build: %v", entries)
	}
}
