package image

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct{ out, want string }{
		{"Python 3.14.7\n", "3.14.7"},
		{"Python 3.13.15", "3.13.15"},
		{"v24.21.0\n", "24.21.0"},
		{"12.2.0\n", "12.2.0"},
		{"ruby 3.3.8 (2025-04-09 revision b200bad6cd) [x86_64-linux-gnu]\n", "3.3.8"},
		{"Bundler version 2.4.20\n", "2.4.20"},
		{"4.0.22\n", "4.0.22"},
		{"1.4.5\n", "1.4.5"},
		{"2.1.332 (Claude Code)\n", "2.1.332"},
		{"tmux 3.7c\n", "3.7c"},
		{"tmux 3.3a", "3.3a"},
		{"git version 2.53.0\n", "2.53.0"},
		{"node: warning: x\nv24.1.0", "24.1.0"},
		{"no version here", ""},
		{"built 2025-04-09", ""},
	}
	for _, tt := range tests {
		if got := parseVersion(tt.out); got != tt.want {
			t.Errorf("parseVersion(%q) = %q, want %q", tt.out, got, tt.want)
		}
	}
}

func TestPythonMinor(t *testing.T) {
	for name, want := range map[string]string{
		"python3.13": "3.13", "python3.14-venv": "3.14", "libpython3.13-stdlib": "3.13",
		"python3.13-minimal": "3.13", "python3": "", "python3-pip": "", "libpython3-stdlib": "",
		"python3.13-config": "3.13", "python3-pip-whl": "", "ruby3.3": "",
	} {
		if got := pythonMinor(name); got != want {
			t.Errorf("pythonMinor(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		less bool
	}{
		{"3.9", "3.13", true}, {"3.13", "3.14", true}, {"3.14", "3.13", false},
		{"3.13", "3.13", false}, {"3.13", "3.13.1", true},
	} {
		if got := versionLess(tt.a, tt.b); got != tt.less {
			t.Errorf("versionLess(%s, %s) = %v", tt.a, tt.b, got)
		}
	}
}

func TestDebianRelease(t *testing.T) {
	tests := []struct{ dv, codename, want string }{
		{"12.11\n", "bookworm", "12.11 (bookworm)"},
		{"forky/sid\n", "forky", "forky (testing)"},
		{"forky/sid\n", "", "forky (testing)"},
		{"trixie/sid", "sid", "sid (unstable)"},
		{"", "forky", "forky"},
	}
	for _, tt := range tests {
		if got := debianRelease(tt.dv, tt.codename); got != tt.want {
			t.Errorf("debianRelease(%q, %q) = %q, want %q", tt.dv, tt.codename, got, tt.want)
		}
	}
	osr := "PRETTY_NAME=\"Debian GNU/Linux forky/sid\"\nNAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=forky\nID=debian\n"
	if got := osReleaseField(osr, "VERSION_CODENAME"); got != "forky" {
		t.Errorf("VERSION_CODENAME = %q", got)
	}
	if got := osReleaseField(osr, "NAME"); got != "Debian GNU/Linux" {
		t.Errorf("NAME = %q", got)
	}
}

func TestParseDpkgStatus(t *testing.T) {
	status := `Package: tmux
Status: install ok installed
Architecture: amd64
Version: 3.7c-1

Package: gone
Status: deinstall ok config-files
Architecture: amd64

Package: ca-certificates
Status: install ok installed
Architecture: all
Description: multi
 line: with a colon
`
	want := [][2]string{{"tmux", "amd64"}, {"ca-certificates", "all"}}
	if got := parseDpkgStatus(status); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestInstalledPackages_SizesCountHardLinksOnce(t *testing.T) {
	root := t.TempDir()
	write := func(rel string, data string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("var/lib/dpkg/status", "Package: a\nStatus: install ok installed\nArchitecture: amd64\n\n"+
		"Package: b\nStatus: install ok installed\nArchitecture: all\n")
	write("var/lib/dpkg/info/a:amd64.list", "/.\n/usr\n/usr/bin/a\n/usr/share/doc/a/removed\n")
	write("var/lib/dpkg/info/b.list", "/usr/bin/b\n")
	write("usr/bin/a", strings.Repeat("x", 10000))
	write("usr/bin/b", "b")
	if err := os.Link(filepath.Join(root, "usr/bin/a"), filepath.Join(root, "usr/bin/a2")); err != nil {
		t.Fatal(err)
	}
	pkgs, err := installedPackages(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 || pkgs[0].name != "a" || pkgs[1].name != "b" || len(pkgs[0].files) != 4 {
		t.Fatalf("packages %+v", pkgs)
	}
	seen := map[fileID]bool{}
	var a int64
	for _, f := range pkgs[0].files {
		a += fileUsage(filepath.Join(root, f), seen)
	}
	if a < 10000 {
		t.Errorf("package a uses %d bytes, want at least its 10000-byte file", a)
	}
	total, err := diskUsage(filepath.Join(root, "usr/bin"), map[fileID]bool{})
	if err != nil {
		t.Fatal(err)
	}
	if total >= 2*a {
		t.Errorf("du of usr/bin = %d counts the hard-linked file twice (a = %d)", total, a)
	}
}

func TestKernelComponent(t *testing.T) {
	f := filepath.Join(t.TempDir(), "vmlinux.bin")
	os.WriteFile(f, make([]byte, 3000), 0o644)
	c := kernelComponent("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1", f, "/nonexistent")
	want := Component{Component: "Linux kernel", Version: "6.1.176 (cloud)", Bytes: 3000}
	if c != want {
		t.Errorf("got %+v, want %+v", c, want)
	}
}

func TestParseDumpe2fs(t *testing.T) {
	out := "dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   fcm-root\nBlock count:              524288\n" +
		"Reserved block count:     26214\nFree blocks:              262144\nFree inodes:              100\nBlock size:               4096\n"
	used, size, err := parseDumpe2fs(out)
	if err != nil {
		t.Fatal(err)
	}
	if used != 1<<30 || size != 2<<30 {
		t.Errorf("used %d size %d, want 1 GiB of 2 GiB", used, size)
	}
	if _, _, err := parseDumpe2fs("Block count: 10\n"); err == nil {
		t.Error("no error without free blocks and block size")
	}
}

func TestAssembleAndWriteTable(t *testing.T) {
	tree := []Component{
		{"Debian", "forky (testing)", 400 << 20},
		{"Python", "3.14.7", 60 << 20},
		{"tmux", "3.7c", 1200 << 10},
	}
	comps := assemble(tree, Component{"Linux kernel", "6.1.176 (cloud)", 45 << 20},
		Component{ImageComponent, "ext4, 1900 MiB used of 2048 MiB", 1900 << 20})
	var names []string
	for _, c := range comps {
		names = append(names, c.Component)
	}
	if want := []string{"Debian", "Linux kernel", "Python", "tmux", "image"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("order %v, want %v", names, want)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, comps); err != nil {
		t.Fatal(err)
	}
	want := `COMPONENT     VERSION                          SIZE
Debian        forky (testing)                  400 MiB
Linux kernel  6.1.176 (cloud)                  45 MiB
Python        3.14.7                           60 MiB
tmux          3.7c                             1.2 MiB
image         ext4, 1900 MiB used of 2048 MiB
`
	if buf.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1536: "2 KiB", 7 << 20: "7.0 MiB", 312 << 20: "312 MiB", 3 << 29: "1.5 GiB",
	} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestNPMName(t *testing.T) {
	for spec, want := range map[string]string{
		"bun@1.4.5": "bun", "@anthropic-ai/claude-code@2.1.332": "@anthropic-ai/claude-code",
		"@scope/x": "@scope/x", "left-pad": "left-pad",
	} {
		if got := npmName(spec); got != want {
			t.Errorf("npmName(%q) = %q, want %q", spec, got, want)
		}
	}
}
