// Package e2e holds fcm's end-to-end tests: real VMs booted with QEMU inside a
// network namespace the tests make, with no route out. They need root, QEMU and
// the minimal guest image (`make test-image`); they fail, never skip, without them.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/ext4"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/netns"
)

// The images the tests boot; `make test-image` builds both: minimal for most
// tests, full (the product default) to prove the app toolchains are there.
var (
	imageDir     = envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image")
	fullImageDir = envOr("FCM_TEST_IMAGE_FULL", "/var/cache/fcm/test-image-full")
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	if netns.Current() == "" {
		// Check the image here, where a failure is one clear line, then move into a
		// namespace of our own for the tests themselves.
		if os.Getenv("FCM_BIN") == "" {
			bin, err := buildFCM()
			if err != nil {
				fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
				os.Exit(1)
			}
			os.Setenv("FCM_BIN", bin)
			os.Setenv("FCM_BIN_ADHOC", "1")
		}
		dir, err := buildStandin()
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			os.Exit(1)
		}
		os.Setenv("FCM_STANDIN_DIR", dir)
		if err := prepareFixtures(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: test packages: %v\n", err)
			os.Exit(1)
		}
		if err := checkImages(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			os.Exit(1)
		}
		code, err := netns.Reexec("fcm-e2e")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		}
		if os.Getenv("FCM_BIN_ADHOC") != "" {
			os.RemoveAll(filepath.Dir(os.Getenv("FCM_BIN")))
		}
		os.RemoveAll(dir)
		os.Exit(code)
	}
	if err := cgroup.EnsureMounted(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// standinDir holds the Firecracker stand-in, named firecracker.
var standinDir = os.Getenv("FCM_STANDIN_DIR")

// buildStandin builds the test-only Firecracker stand-in as <dir>/firecracker.
func buildStandin() (string, error) {
	dir, err := os.MkdirTemp("", "fcm-e2e-standin-")
	if err != nil {
		return "", err
	}
	os.Chmod(dir, 0o755)
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "firecracker"), "github.com/fcmhost/fcm/internal/vmm/firecracker/standin").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the firecracker stand-in: %v: %s", err, out)
	}
	return dir, nil
}

// buildFCM builds the fcm binary when the caller (make test) did not give one.
func buildFCM() (string, error) {
	dir, err := os.MkdirTemp("", "fcm-e2e-bin-")
	if err != nil {
		return "", err
	}
	// The daemon's git user runs it as the pre-receive hook.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fcm")
	out, err := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/fcmhost/fcm/cmd/fcm").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
}

// checkImages makes sure the images exist and that their /sbin/fcm-init is the fcm
// binary of this tree (FCM_BIN, as built by make), so a stale init is never tested.
func checkImages() error {
	for _, dir := range []string{imageDir, fullImageDir} {
		if err := checkImage(dir); err != nil {
			return err
		}
	}
	return nil
}

func checkImage(imageDir string) error {
	for _, f := range []string{image.KernelFile, image.InitrdFile, image.RootfsFile} {
		if _, err := os.Stat(filepath.Join(imageDir, f)); err != nil {
			return fmt.Errorf("guest image missing (%v): build it with 'make test-image'", err)
		}
	}
	bin := os.Getenv("FCM_BIN")
	if os.Getenv("FCM_BIN_ADHOC") != "" {
		return nil // built here, not by make: it cannot be the image's init byte for byte
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("FCM_BIN: %w", err)
	}
	got, err := ext4.Read(context.Background(), filepath.Join(imageDir, image.RootfsFile), "/usr/sbin/fcm-init")
	if err != nil {
		return err
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		return fmt.Errorf("the guest image in %s has an older fcm as its init than %s: rebuild it with 'make test-image'", imageDir, bin)
	}
	return nil
}

// sh runs a host command and fails the test with its output when it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, bytes.TrimSpace(out))
	}
	return string(out)
}
