package guest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/ext4"
	"golang.org/x/crypto/ssh"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "id_ed25519")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s, want ed25519", k1.PublicKey().Type())
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil || !bytes.Equal(pub, ssh.MarshalAuthorizedKey(k1.PublicKey())) {
		t.Errorf(".pub = %q, %v", pub, err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1.PublicKey().Marshal(), k2.PublicKey().Marshal()) {
		t.Error("second load made a new key instead of reading the first")
	}
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "too open") {
		t.Errorf("world-readable key: err = %v", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Error("no error for a corrupt key")
	}
}

func TestProvision(t *testing.T) {
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "disk.img")
	f, _ := os.Create(img)
	f.Close()
	os.Truncate(img, 64<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	// The base image has /root and /etc/ssh, as debootstrap makes them.
	if err := ext4.Write(ctx, img, []ext4.File{{Path: "/root", Dir: true, Mode: 0o700}, {Path: "/etc", Dir: true}, {Path: "/etc/ssh", Dir: true}}); err != nil {
		t.Fatal(err)
	}
	daemon, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity(daemon.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := Provision(ctx, img, id); err != nil {
		t.Fatal(err)
	}
	auth, err := ext4.Read(ctx, img, "/root/.ssh/authorized_keys")
	if err != nil || !bytes.Equal(auth, ssh.MarshalAuthorizedKey(daemon.PublicKey())) {
		t.Errorf("authorized_keys = %q, %v", auth, err)
	}
	hostPEM, err := ext4.Read(ctx, img, "/etc/ssh/ssh_host_ed25519_key")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(signer.PublicKey().Marshal(), id.HostKey.Marshal()) {
		t.Error("the host key in the disk is not the one the daemon pins")
	}
	// Provisioning twice (a re-run after a failure) keeps the filesystem clean.
	if err := Provision(ctx, img, id); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck: %v: %s", err, out)
	}
	other, _ := NewIdentity(daemon.PublicKey())
	if bytes.Equal(other.HostKey.Marshal(), id.HostKey.Marshal()) {
		t.Error("two VMs got the same host key")
	}
}

func TestBootArgs(t *testing.T) {
	got := BootArgs(Boot{Address: net.IPv4(172, 16, 0, 50), Gateway: net.IPv4(172, 16, 0, 1),
		Mask: net.CIDRMask(24, 32), Hostname: "cosmic-nova", SwapMiB: 512})
	want := "console=ttyS0 reboot=k panic=1 pci=off quiet root=/dev/vda rw ip=172.16.0.50::172.16.0.1:255.255.255.0:cosmic-nova:eth0:off fcm.swap=512"
	if got != want {
		t.Errorf("BootArgs =\n%q\nwant\n%q", got, want)
	}
	if got := BootArgs(Boot{Address: net.IPv4(10, 0, 0, 2), Gateway: net.IPv4(10, 0, 0, 1), Mask: net.CIDRMask(16, 32), Hostname: "x"}); strings.Contains(got, "fcm.swap") || !strings.Contains(got, ":255.255.0.0:") {
		t.Errorf("BootArgs without swap = %q", got)
	}
}
