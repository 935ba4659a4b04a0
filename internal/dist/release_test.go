package dist

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReleases checks what `make release` made (FCM_RELEASES): a tarball per
// platform holding one executable fcm, a binary of that OS and CPU, and
// SHA256SUMS matching them.
func TestReleases(t *testing.T) {
	dir := os.Getenv("FCM_RELEASES")
	if dir == "" {
		t.Fatal("set FCM_RELEASES=bin/releases (run make release first)")
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join("..", "..", dir) // from the repository's root, not this package's
	}
	sums := readSums(t, filepath.Join(dir, SumsFile))
	for _, p := range Platforms {
		t.Run(p.OS+"-"+p.Arch, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, p.Tarball()))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if got := hex.EncodeToString(sum[:]); sums[p.Tarball()] != got {
				t.Errorf("%s: SHA256SUMS says %q, the file's is %s", p.Tarball(), sums[p.Tarball()], got)
			}
			bin := onlyFcm(t, data)
			switch p.OS {
			case "linux":
				f, err := elf.NewFile(bytes.NewReader(bin))
				if err != nil {
					t.Fatalf("fcm is not ELF: %v", err)
				}
				want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.Arch]
				if f.Machine != want || f.Type != elf.ET_EXEC {
					t.Errorf("fcm is ELF %v %v, want %v executable", f.Type, f.Machine, want)
				}
			case "darwin":
				f, err := macho.NewFile(bytes.NewReader(bin))
				if err != nil {
					t.Fatalf("fcm is not Mach-O: %v", err)
				}
				want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[p.Arch]
				if f.Cpu != want || f.Type != macho.TypeExec {
					t.Errorf("fcm is Mach-O %v %v, want %v executable", f.Type, f.Cpu, want)
				}
			}
		})
	}
}

// onlyFcm returns the one file of a tarball, which must be fcm, mode 0755.
func onlyFcm(t *testing.T, tarball []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	var bin []byte
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("bad tar: %v", err)
		}
		if n > 0 || h.Name != "fcm" || h.Typeflag != tar.TypeReg {
			t.Fatalf("the tarball holds %q (type %c): want the one file fcm", h.Name, h.Typeflag)
		}
		if h.Mode&0o777 != 0o755 {
			t.Errorf("fcm has mode %#o, want 0755", h.Mode&0o777)
		}
		if bin, err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	if bin == nil {
		t.Fatal("the tarball is empty")
	}
	return bin
}

// readSums reads sha256sum's output: name -> hex digest.
func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("%s: bad line %q", path, sc.Text())
		}
		sums[name] = sum
	}
	return sums
}
