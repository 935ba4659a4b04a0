package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/ext4"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// TestDaemon_VMMadeBeforeSharedBases: a VM made the way fcm made them before
// the base was shared (one disk holding a full copy of the image, its keys
// written into it, a swap file, no base of its own) is read as it is: it
// starts, takes SSH with its pinned key, keeps its data across a restart, and
// is destroyed like any other.
func TestDaemon_VMMadeBeforeSharedBases(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	work := t.TempDir()
	d := startDaemon(t, dataDir) // makes the data dir, its key and store
	d.stop(syscall.SIGTERM)

	// The old layout: vms/<id>/rootfs.img, the host key and the daemon's key
	// in the disk, and sshd reading them where an old image's sshd did.
	const id, name = "old12345", "oldie"
	key, err := guest.LoadOrCreateKey(filepath.Join(dataDir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	ident, err := guest.NewIdentity(key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(dataDir, "vms", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs.img")
	ctx := context.Background()
	if _, err := disk.Create(ctx, filepath.Join(imageDir, image.RootfsFile), rootfs, 2<<30); err != nil {
		t.Fatal(err)
	}
	if err := guest.Provision(ctx, rootfs, ident); err != nil {
		t.Fatal(err)
	}
	oldSSHD := "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nHostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n"
	if err := ext4.Write(ctx, rootfs, []ext4.File{{Path: "/etc/ssh/sshd_config.d/fcm.conf", Data: []byte(oldSSHD)}}); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := store.PoolFor(netip.MustParsePrefix(daemonSubnet))
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		ip, err := tx.Lease(id, pool)
		if err != nil {
			return err
		}
		b := ip.As4()
		return tx.InsertVM(&store.VM{ID: id, Name: name, Owner: "admin", State: "stopped",
			IP: ip.String(), MAC: fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3]), Tap: "tap_" + id,
			CPUs: 1, MemoryMiB: 512, SwapMiB: 64, DiskBytes: 2 << 30, Port: 3000, Hypervisor: "qemu",
			HostKey: string(ssh.MarshalAuthorizedKey(ident.HostKey)), CreatedAt: time.Now().UTC()})
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}

	d = startDaemon(t, dataDir)
	if out := d.mustCLI(work, "start", name); !strings.Contains(out, name+" is running") {
		t.Fatalf("start: %s", out)
	}
	v := d.vms(work)[name]
	run := func(cmd string) string {
		t.Helper()
		c := &guest.Client{Addr: net.JoinHostPort(v.IP, "22"), Signer: key, HostKey: ident.HostKey}
		defer c.Close()
		ctx, cancel := withTimeout(time.Minute)
		defer cancel()
		out, err := c.Run(ctx, cmd)
		if err != nil {
			t.Fatalf("ssh %s: %v", cmd, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run("findmnt -no FSTYPE /; cat /proc/swaps | grep -c /swapfile; echo kept > /root/old-data; hostname"); got != "ext4\n1\n"+name {
		t.Errorf("the old vm: %q, want its one ext4 disk as /, its swap file, its name", got)
	}
	d.mustCLI(work, "stop", name)
	d.mustCLI(work, "start", name)
	if got := run("cat /root/old-data"); got != "kept" {
		t.Errorf("after a restart: %q", got)
	}
	if out := d.mustCLI(work, "destroy", name); !strings.Contains(out, "Destroyed "+name) {
		t.Errorf("destroy: %s", out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the old vm's directory is left: %v", err)
	}
}
