package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/ext4"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"golang.org/x/crypto/ssh"
)

// secondBaseMarker is the file only the second base's root filesystem has.
const secondBaseMarker = "/etc/fcm-second-base"

// TestImages: a new build is a new base for new VMs while existing VMs keep
// theirs, across a stop and a start; fcm image ls shows both with their VMs;
// fcm image prune removes nothing in use, then the old base once its VM is
// gone.
func TestImages(t *testing.T) {
	// The daemon's source image is a directory of this test's own (links to
	// the test image's files), so a second base can replace it as `fcm image
	// build` would without touching the shared image.
	src := t.TempDir()
	for _, f := range []string{image.KernelFile, image.InitrdFile, image.RootfsFile} {
		if err := os.Link(filepath.Join(imageDir, f), filepath.Join(src, f)); err != nil {
			t.Fatal(err)
		}
	}
	first, err := image.ReadManifest(imageDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.WriteManifest(src, first); err != nil {
		t.Fatal(err)
	}
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonImage(t, "qemu", dataDir, src)
	work := t.TempDir()

	d.mustCLI(work, "create", "--name", "a")
	second := buildSecondBase(t, src)
	d.mustCLI(work, "create", "--name", "b")

	out := d.mustCLI(work, "image", "ls")
	t.Logf("fcm image ls:\n%s", out)
	imgs := d.images(work)
	if len(imgs) != 2 || vmsOf(imgs[first.ID]) != "a" || imgs[first.ID].Current ||
		vmsOf(imgs[second]) != "b" || !imgs[second].Current {
		t.Fatalf("images after the second build: %+v\n%s", imgs, out)
	}
	for id, vm := range map[string]string{first.ID: "a", second: "b"} {
		if !strings.Contains(out, id[:12]) || !strings.Contains(out, " "+vm+"\n") {
			t.Errorf("fcm image ls does not show base %s with VM %s:\n%s", id[:12], vm, out)
		}
	}
	hasMarker := "test -e " + secondBaseMarker + " && echo yes || echo no"
	if got := d.inVM(work, "b", hasMarker); got != "yes" {
		t.Errorf("b, made after the build, has no %s: %q", secondBaseMarker, got)
	}
	if got := d.inVM(work, "a", hasMarker); got != "no" {
		t.Errorf("a, made before the build, has %s: %q", secondBaseMarker, got)
	}

	// a boots again on its own base.
	d.mustCLI(work, "stop", "a")
	d.mustCLI(work, "start", "a")
	if got := d.inVM(work, "a", hasMarker); got != "no" {
		t.Errorf("a after a stop and start has %s: %q", secondBaseMarker, got)
	}

	out = d.mustCLI(work, "image", "prune")
	t.Logf("fcm image prune (both in use):\n%s", out)
	if out != "nothing to prune: 2 images, all in use or current\n" {
		t.Errorf("prune with both bases in use:\n%s", out)
	}
	if len(d.images(work)) != 2 {
		t.Fatal("prune removed a base in use")
	}

	d.mustCLI(work, "destroy", "a", "--yes")
	out = d.mustCLI(work, "image", "prune")
	t.Logf("fcm image prune (a destroyed):\n%s", out)
	if !strings.HasPrefix(out, "Removed "+first.ID[:12]+" (minimal, built ") || !strings.Contains(out, "1 image kept") {
		t.Errorf("prune after a is gone:\n%s", out)
	}
	// The old base's files are links to the shared test image's: removing
	// them freed (almost) nothing, and prune says so.
	if !strings.Contains(out, "still linked from elsewhere") {
		t.Errorf("prune claims to have freed the test image's files:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "images", first.ID)); !os.IsNotExist(err) {
		t.Errorf("the old base's directory is still there: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "images")); len(entries) != 1 {
		t.Errorf("images directory after prune: %v", entries)
	}
	out = d.mustCLI(work, "image", "ls")
	t.Logf("fcm image ls (after prune):\n%s", out)
	if imgs := d.images(work); len(imgs) != 1 || !imgs[second].Current || vmsOf(imgs[second]) != "b" {
		t.Errorf("images after prune: %+v", imgs)
	}
	if got := d.inVM(work, "b", hasMarker); got != "yes" {
		t.Errorf("b after prune: %q", got)
	}
	d.mustCLI(work, "destroy", "b", "--yes")

	if m, err := image.ReadManifest(imageDir); err != nil || m.ID != first.ID {
		t.Errorf("the shared test image changed: %v", err)
	}
}

// buildSecondBase puts a bootable image that differs from the one in src (its
// root filesystem has secondBaseMarker) in src's place, as `fcm image build`
// replaces an image: the manifest goes, the new files are renamed over the
// old, and the new manifest comes last. It returns the new image's id.
func buildSecondBase(t *testing.T, src string) string {
	t.Helper()
	ctx, cancel := withTimeout(time.Minute)
	defer cancel()
	m, err := image.ReadManifest(src)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(src, "."+image.RootfsFile+".tmp")
	if _, err := disk.Clone(ctx, filepath.Join(src, image.RootfsFile), root); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ext4.Write(ctx, root, []ext4.File{{Path: secondBaseMarker, Data: []byte("second\n")}}); err != nil {
		t.Fatal(err)
	}
	if m.ID, err = image.ContentID(filepath.Join(src, image.KernelFile), filepath.Join(src, image.InitrdFile), root); err != nil {
		t.Fatal(err)
	}
	m.Built = time.Now().UTC()
	if err := os.Remove(filepath.Join(src, image.ManifestFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(root, filepath.Join(src, image.RootfsFile)); err != nil {
		t.Fatal(err)
	}
	if err := image.WriteManifest(src, m); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// images lists the daemon's bases through `fcm image ls --json`, by id.
func (d *daemonProc) images(dir string) map[string]api.Image {
	d.t.Helper()
	var list []api.Image
	if err := json.Unmarshal([]byte(d.mustCLI(dir, "image", "ls", "--json")), &list); err != nil {
		d.t.Fatal(err)
	}
	out := map[string]api.Image{}
	for _, img := range list {
		out[img.ID] = img
	}
	return out
}

func vmsOf(img api.Image) string { return strings.Join(img.VMs, ",") }

// inVM runs a shell command in VM name over SSH with the daemon's key and
// returns its output, trimmed.
func (d *daemonProc) inVM(dir, name, cmd string) string {
	d.t.Helper()
	c := d.guestClient(dir, name)
	defer c.Close()
	ctx, cancel := withTimeout(time.Minute)
	defer cancel()
	out, err := c.Run(ctx, cmd)
	if err != nil {
		d.t.Fatalf("%s in vm %s: %v: %s", cmd, name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// guestClient is an SSH client to VM name as root, with the daemon's key.
func (d *daemonProc) guestClient(dir, name string) *guest.Client {
	d.t.Helper()
	vm := d.vms(dir)[name]
	key, err := guest.LoadOrCreateKey(filepath.Join(d.dataDir, "id_ed25519"))
	if err != nil {
		d.t.Fatal(err)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.HostKey))
	if err != nil {
		d.t.Fatalf("vm %s: host key: %v", name, err)
	}
	return &guest.Client{Addr: net.JoinHostPort(vm.IP, "22"), Signer: key, HostKey: hk}
}
