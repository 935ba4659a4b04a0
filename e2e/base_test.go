package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// TestBase_SharedReadOnlyAndIsolated boots two VMs on one base image and has
// root in the first write everywhere it can, the base's device included: the
// base's bytes never change, and the second VM sees none of the first's
// changes; the first keeps its own across a reboot.
func TestBase_SharedReadOnlyAndIsolated(t *testing.T) {
	t.Parallel() // a VM of its own on fcm0, no daemon: beside TestDeploy_Runtimes
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	baseFile := filepath.Join(imageDir, image.RootfsFile)
	before := sha256File(t, baseFile)

	a := newVM(t, "e2ebasea", "base-a", net.IPv4(172, 16, 0, 81))
	b := newVM(t, "e2ebaseb", "base-b", net.IPv4(172, 16, 0, 82))
	if a.spec.Drives[0].Path != b.spec.Drives[0].Path || !a.spec.Drives[0].ReadOnly {
		t.Fatalf("the vms do not share one read-only base: %+v / %+v", a.spec.Drives[0], b.spec.Drives[0])
	}
	instA := a.boot(t, d)
	instB := b.boot(t, d)

	// Root in a: new files, changed and removed files of the base, a renamed
	// base directory, and writes to the base's own device.
	a.run(t, `set -e
echo a > /root/only-a
echo a > /etc/only-a
rm /etc/os-release
printf 'changed' | dd of=/usr/bin/tmux bs=1 seek=100 conv=notrunc 2>/dev/null
mv /usr/share/common-licenses /usr/share/licenses-moved
sync`)
	out := a.run(t, `dev=$(findfs LABEL=fcm-root); echo "base device $dev"
blockdev --setrw "$dev" 2>&1 || true
if dd if=/dev/zero of="$dev" bs=4096 count=16 conv=notrunc oflag=direct 2>&1; then echo WROTE; fi
mkdir -p /mnt/b && mount -o rw "$dev" /mnt/b 2>&1; touch /mnt/b/x 2>&1 && echo WROTE-FS; sync; true`)
	t.Logf("root writing to the base:\n%s", out)
	if !strings.Contains(out, "base device /dev/vd") {
		t.Fatalf("the base's device was not found in the vm:\n%s", out)
	}
	if strings.Contains(out, "WROTE") {
		t.Errorf("root wrote to the base:\n%s", out)
	}

	// b sees the base as it was.
	if got := b.run(t, "ls /root/only-a /etc/only-a 2>&1; test -e /etc/os-release && echo os-release; test -d /usr/share/common-licenses && echo licenses; tmux -V"); strings.Contains(got, "only-a\n") ||
		!strings.Contains(got, "No such file") || !strings.Contains(got, "os-release") || !strings.Contains(got, "licenses") || !strings.HasPrefix(strings.Split(got, "\n")[len(strings.Split(got, "\n"))-1], "tmux ") {
		t.Errorf("the second vm sees the first's changes:\n%s", got)
	}
	// a sees its own.
	if got := a.run(t, "cat /root/only-a /etc/only-a; test -e /etc/os-release || echo gone; test -d /usr/share/licenses-moved && echo moved"); got != "a\na\ngone\nmoved" {
		t.Errorf("the first vm's own changes: %q", got)
	}

	// A reboot of a keeps its changes.
	for _, inst := range []vmm.Instance{instA, instB} {
		if graceful, err := vmm.Stop(context.Background(), inst, 30*time.Second); err != nil || !graceful {
			t.Fatalf("stop: graceful=%v, %v", graceful, err)
		}
	}
	a.client.Close()
	a.boot(t, d)
	if got := a.run(t, "cat /root/only-a; test -d /usr/share/licenses-moved && echo moved"); got != "a\nmoved" {
		t.Errorf("after a reboot the first vm has %q, want its changes kept", got)
	}
	if after := sha256File(t, baseFile); after != before {
		t.Errorf("the base changed: sha256 %s, was %s", after, before)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
