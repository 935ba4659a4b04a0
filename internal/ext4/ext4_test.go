package ext4

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func newImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

// stat returns debugfs's description of an inode (mode, owner, type).
func stat(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "stat "+path, img).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestWrite_FilesDirsLinks(t *testing.T) {
	ctx := context.Background()
	img := newImage(t)
	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, []byte(strings.Repeat("x", 100000)), 0o600); err != nil {
		t.Fatal(err)
	}
	files := []File{
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/root/.ssh", Dir: true, Mode: 0o700},
		{Path: "/root/.ssh/authorized_keys", Data: []byte("ssh-ed25519 AAAA test\n"), Mode: 0o600},
		{Path: "/sbin-tool", Source: src, Mode: 0o755, UID: 1000, GID: 1000},
		{Path: "/init", Link: "sbin-tool"},
	}
	if err := Write(ctx, img, files); err != nil {
		t.Fatal(err)
	}
	got, err := Read(ctx, img, "/root/.ssh/authorized_keys")
	if err != nil || string(got) != "ssh-ed25519 AAAA test\n" {
		t.Fatalf("Read = %q, %v", got, err)
	}
	if big, _ := Read(ctx, img, "/sbin-tool"); len(big) != 100000 {
		t.Errorf("copied file has %d bytes, want 100000", len(big))
	}
	for path, want := range map[string][]string{
		"/root":                      {"Type: directory", "Mode:  0700", "User:     0"},
		"/root/.ssh/authorized_keys": {"Type: regular", "Mode:  0600", "User:     0"},
		"/sbin-tool":                 {"Type: regular", "Mode:  0755", "User:  1000"},
		"/init":                      {"Type: symlink", `Fast link dest: "sbin-tool"`},
	} {
		s := stat(t, img, path)
		for _, w := range want {
			if !strings.Contains(s, w) {
				t.Errorf("%s: stat lacks %q:\n%s", path, w, s)
			}
		}
	}
	// Writing again replaces, it does not fail or duplicate.
	files[2].Data = []byte("replaced\n")
	if err := Write(ctx, img, files); err != nil {
		t.Fatal(err)
	}
	if got, _ := Read(ctx, img, "/root/.ssh/authorized_keys"); string(got) != "replaced\n" {
		t.Errorf("after rewrite: %q", got)
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after writes: %v: %s", err, out)
	}
}

func TestWrite_Errors(t *testing.T) {
	ctx := context.Background()
	img := newImage(t)
	tests := []struct {
		name string
		file File
		want string
	}{
		{"relative path", File{Path: "etc/x", Data: []byte("x")}, "bad path"},
		{"unclean path", File{Path: "/etc/../x", Data: []byte("x")}, "bad path"},
		{"space in path", File{Path: "/a b", Data: []byte("x")}, "not supported"},
		{"missing parent directory", File{Path: "/no/such/dir/file", Data: []byte("x")}, "File not found"},
		{"missing source", File{Path: "/x", Source: "/no/such/file"}, "debugfs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(ctx, img, []File{tt.file})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if err := Write(ctx, filepath.Join(t.TempDir(), "none.img"), []File{{Path: "/x", Data: []byte("x")}}); err == nil {
		t.Error("no error for a missing image")
	}
	if _, err := Read(ctx, img, "/nope"); err == nil {
		t.Error("no error reading a missing file")
	}
}
