package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fcm runs the real binary; asUser, when non-zero, runs it as that uid.
func fcm(t *testing.T, asUser uint32, args ...string) (string, int) {
	t.Helper()
	bin := os.Getenv("FCM_BIN")
	if asUser != 0 {
		// The binary's directory may be closed to others (a clone in mktemp -d, or
		// t.TempDir's parent): run a copy from a directory anyone can enter.
		dir, err := os.MkdirTemp("", "fcm-cli-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		os.Chmod(dir, 0o755)
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(dir, "fcm")
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, args...)
	if asUser != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: asUser, Gid: asUser}}
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestCLI_ImageBuild(t *testing.T) {
	const nobody = 65534
	tests := []struct {
		name     string
		uid      uint32
		args     []string
		wantCode int
		want     string
	}{
		{"not root", nobody, []string{"image", "build", "--variant", "minimal", "--out", t.TempDir()}, 1,
			"fcm: image build: building the guest image needs root (debootstrap and device files): run it with sudo\n"},
		{"unknown variant", 0, []string{"image", "build", "--variant", "huge"}, 2,
			"fcm: unknown image variant \"huge\" (want full|minimal) (see 'fcm image build --help')\n"},
		{"unknown flag", 0, []string{"image", "build", "--size", "3"}, 2,
			"fcm: unknown flag: --size (see 'fcm image build --help')\n"},
		{"extra argument", 0, []string{"image", "build", "now"}, 2,
			"fcm: unexpected argument \"now\" (see 'fcm image build --help')\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := fcm(t, tt.uid, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; output %q", code, tt.wantCode, out)
			}
			if tt.want != "" && !strings.Contains(out, tt.want) {
				t.Errorf("output %q, want %q", out, tt.want)
			}
			if strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Errorf("error is more than one line: %q", out)
			}
		})
	}
	t.Run("debootstrap missing", func(t *testing.T) {
		cmd := exec.Command(os.Getenv("FCM_BIN"), "image", "build", "--variant", "minimal", "--out", t.TempDir())
		cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin") // no sbin: no debootstrap
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatal("build succeeded without debootstrap")
		}
		for _, w := range []string{"missing tool", "debootstrap", "apt-get install -y", "debootstrap"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("output %q lacks %q", out, w)
			}
		}
	})
	t.Run("help explains the variants and the cache", func(t *testing.T) {
		out, code := fcm(t, 0, "image", "build", "--help")
		for _, w := range []string{"minimal", "full", "vmlinux.bin", "initrd.img", "base-rootfs.img", "--cache-dir", "Needs root"} {
			if !strings.Contains(out, w) {
				t.Errorf("help lacks %q", w)
			}
		}
		if code != 0 {
			t.Errorf("exit %d", code)
		}
	})
}
