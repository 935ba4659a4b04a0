package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/fcmhost/fcm/internal/edge/edgetest"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmconf"
	"github.com/fcmhost/fcm/internal/vmstore"
)

// treeHash is what the checkpoint tests compare a guest's files by: every
// file under /root, /etc and /usr/local with its contents, and the names in
// /usr/bin (the base's, seen through the VM's own disk); but for the files
// fcm-init writes at every boot from the VM's identity (its name).
const treeHash = `{ find /root /etc /usr/local -xdev -type f ! -path /etc/hostname ! -path /etc/hosts ! -path /etc/resolv.conf -print0 | sort -z | xargs -0 sha256sum; ls -la /usr/bin; } 2>/dev/null | sha256sum | cut -d' ' -f1`

// unmountStore unmounts the XFS store a daemon made in dataDir and detaches
// its loop device, if there is one.
func unmountStore(t *testing.T, dataDir string) {
	t.Helper()
	mnt, img := filepath.Join(dataDir, vmstore.MountPoint), filepath.Join(dataDir, vmstore.ImageFile)
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil && !strings.Contains(string(out), "not mounted") && !strings.Contains(string(out), "no mount point") {
		t.Errorf("umount %s: %v: %s", mnt, err, out)
	}
	out, _ := exec.Command("losetup", "-n", "-O", "NAME", "-j", img).Output()
	for _, dev := range strings.Fields(string(out)) {
		exec.Command("losetup", "-d", dev).Run()
	}
}

// usedOn is what is in use on dir's filesystem, in bytes.
func usedOn(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// TestCheckpoint_RestoreFork, on a data dir on an ext4 filesystem of its own,
// where the daemon makes its XFS store in a loop file and keeps VM disks
// there: a checkpoint of a running VM with 1 GiB written is taken live (the
// same boot, its process running on) and grows the host's used space by less
// than 1 MiB; after files are deleted and changed everywhere a restore brings
// back exactly the checkpoint's tree, and restoring the automatic checkpoint
// it names undoes it. A fork of the checkpoint has its files, its own address,
// host key and URL answering; writes in one are not seen in the other; both
// survive a daemon restart. A daemon killed during a fork leaves no fork and
// the source running; the fork retried (of the disk as it is now) works.
// fcm checkpoint ls lists them, rm removes one, and numbers go on.
func TestCheckpoint_RestoreFork(t *testing.T) {
	dataDir := loopDataDir(t, 16<<30)
	t.Cleanup(func() { unmountStore(t, dataDir) })
	cleanupVMs(t, dataDir)
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	flags := append(edgeFlags(env), "--store", "auto")
	d, work := startDaemonHV(t, "qemu", dataDir, flags...), t.TempDir()
	if !strings.Contains(d.log(), "kind=xfs-loop") {
		t.Fatalf("the daemon on ext4 did not make an XFS store:\n%s", d.log())
	}
	d.mustCLI(work, "create", "--name", "origin", "--no-git")
	v := d.vms(work)["origin"]
	if _, err := os.Stat(filepath.Join(dataDir, vmstore.MountPoint, "vms", v.ID, "data.img")); err != nil {
		t.Fatalf("origin's disk is not in the store: %v", err)
	}
	in := func(name, cmd string) string { return d.inVM(work, name, cmd) }
	bootID := in("origin", "cat /proc/sys/kernel/random/boot_id")
	pid := in("origin", "setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $!")
	in("origin", "mkdir -p /root/work && echo one > /root/work/a && echo etc > /etc/fcm-test && echo usr > /usr/local/fcm-test && "+
		"dd if=/dev/zero of=/srv/big bs=1M count=1024 conv=fsync status=none && sync") // beside the hashed tree: hashing it is slow
	before := in("origin", treeHash)

	used := usedOn(t, dataDir)
	out := d.mustCLI(work, "checkpoint", "create", "origin", "-m", "all good")
	if !regexp.MustCompile(`^Checkpoint v1 created \([\d.]+m?s, the VM paused for [\d.]+[µm]?s\)\n$`).MatchString(out) {
		t.Errorf("fcm checkpoint create said %q", out)
	}
	if grew := usedOn(t, dataDir) - used; grew >= 1<<20 {
		t.Errorf("a checkpoint of a disk with 1 GiB written took %d KiB of the host's disk", grew>>10)
	}
	if got := in("origin", "cat /proc/sys/kernel/random/boot_id; kill -0 "+pid+" && echo alive"); got != bootID+"\nalive" {
		t.Errorf("after the checkpoint: %q, want the same boot and its process alive", got)
	}

	// Broken everywhere, then restored.
	in("origin", "rm -r /root/work && echo changed > /etc/fcm-test && rm /usr/local/fcm-test /usr/bin/tac && echo later > /root/later && sync")
	broken := in("origin", treeHash)
	if broken == before {
		t.Fatal("the tree hash did not change with the files")
	}
	out = d.mustCLI(work, "restore", "origin", "v1", "--yes")
	if !strings.Contains(out, "origin is on v1's disk and running.") || !strings.Contains(out, "What it replaced is checkpoint v2: fcm restore origin v2 undoes this.") {
		t.Errorf("fcm restore said:\n%s", out)
	}
	if got := in("origin", treeHash); got != before {
		t.Errorf("after the restore the tree is not the checkpoint's")
	}
	if got := in("origin", "cat /root/work/a /etc/fcm-test; test -e /root/later || echo no-later; test -x /usr/bin/tac && echo tac"); got != "one\netc\nno-later\ntac" {
		t.Errorf("after the restore: %q", got)
	}
	if out, code := d.cli(work, "restore", "origin", "v1"); code == 0 || !strings.Contains(out, "--yes") {
		t.Errorf("fcm restore without a terminal or --yes: exit %d: %s", code, out)
	}
	d.mustCLI(work, "restore", "origin", "v2", "--yes")
	if got := in("origin", treeHash); got != broken {
		t.Errorf("after undoing the restore the tree is not what it replaced")
	}
	var cps []struct{ ID, Message, Auto string }
	if err := json.Unmarshal([]byte(d.mustCLI(work, "checkpoint", "ls", "origin", "--json")), &cps); err != nil || len(cps) != 3 ||
		cps[0].Message != "all good" || cps[1].Auto != "before restoring v1" || cps[2].Auto != "before restoring v2" {
		t.Errorf("fcm checkpoint ls --json: %+v (%v)", cps, err)
	}

	// A fork of v1.
	out = d.mustCLI(work, "fork", "origin", "--from", "v1", "--name", "twin")
	if !strings.Contains(out, "VM forked: twin (from origin, v1)") {
		t.Errorf("fcm fork said:\n%s", out)
	}
	vms := d.vms(work)
	origin, twin := vms["origin"], vms["twin"]
	if twin.State != "running" || twin.IP == origin.IP || twin.MAC == origin.MAC || twin.HostKey == origin.HostKey || twin.URL == origin.URL {
		t.Errorf("the fork is not its own: %+v\norigin: %+v", twin, origin)
	}
	if got := in("twin", treeHash); got != before {
		t.Error("the fork's tree is not v1's")
	}
	if got := in("twin", "ssh-keygen -y -f "+vmconf.HostKeyPath); !strings.HasPrefix(twin.HostKey, strings.Join(strings.Fields(got)[:2], " ")) {
		t.Errorf("the fork's host key %q is not the one fcm pinned: %q", got, twin.HostKey)
	}
	in("origin", "echo o > /root/only-origin && sync")
	in("twin", "echo t > /root/only-twin && sync")
	if got := in("origin", "ls /root/only-twin 2>&1 || true") + in("twin", "ls /root/only-origin 2>&1 || true"); strings.Count(got, "No such file") != 2 {
		t.Errorf("writes in one are seen in the other: %q", got)
	}
	assertAnswers(t, env, "twin", "running")
	assertAnswers(t, env, "origin", "running")

	// Both survive a daemon restart.
	d.stop(syscall.SIGTERM)
	d = startDaemonHV(t, "qemu", dataDir, flags...)
	vms = d.vms(work)
	if vms["origin"].State != "running" || vms["twin"].State != "running" {
		t.Errorf("after a daemon restart: origin %s, twin %s", vms["origin"].State, vms["twin"].State)
	}
	if got := in("twin", "cat /root/only-twin"); got != "t" {
		t.Errorf("the fork after a daemon restart: %q", got)
	}

	// Killed while a fork of origin's disk as it is boots: no fork, origin runs.
	originBoot := in("origin", "cat /proc/sys/kernel/random/boot_id")
	d.stop(syscall.SIGTERM)
	os.Setenv(vm.CrashEnv, "create:network")
	d = startDaemonHV(t, "qemu", dataDir, flags...)
	os.Unsetenv(vm.CrashEnv)
	if out, code := d.cli(work, "fork", "origin", "--name", "ghost"); code == 0 {
		t.Fatalf("fcm fork succeeded although the daemon was to die:\n%s", out)
	}
	assertKilledAt(t, d, "create:network")
	d = startDaemonHV(t, "qemu", dataDir, flags...)
	vms = d.vms(work)
	if _, ok := vms["ghost"]; ok || len(vms) != 2 || vms["origin"].State != "running" {
		t.Errorf("after a crash during a fork: %+v", vms)
	}
	if got := in("origin", "cat /proc/sys/kernel/random/boot_id"); got != originBoot {
		t.Errorf("origin was rebooted by a fork's crash")
	}
	if dirs, _ := os.ReadDir(filepath.Join(dataDir, vmstore.MountPoint, "vms")); len(dirs) != 2 {
		t.Errorf("vm directories after a crash during a fork: %d, want 2", len(dirs))
	}
	d.mustCLI(work, "fork", "origin", "--name", "ghost")
	if got := in("ghost", "cat /root/only-origin; test -e /root/only-twin || echo not-twin"); got != "o\nnot-twin" {
		t.Errorf("a fork of origin's disk now: %q", got)
	}

	if out, code := d.cli(work, "checkpoint", "rm", "origin", "v9"); code == 0 || !strings.Contains(out, "no checkpoint v9") {
		t.Errorf("fcm checkpoint rm of a missing one: exit %d: %s", code, out)
	}
	d.mustCLI(work, "checkpoint", "rm", "origin", "v3")
	if out := d.mustCLI(work, "checkpoint", "create", "origin"); !strings.HasPrefix(out, "Checkpoint v4 created") {
		t.Errorf("the next checkpoint after v3's removal: %q", out)
	}
	cpDir := filepath.Join(dataDir, vmstore.MountPoint, "checkpoints", origin.ID)
	for _, name := range []string{"origin", "twin", "ghost"} {
		d.mustCLI(work, "destroy", name)
	}
	if _, err := os.Stat(cpDir); err == nil {
		t.Error("a destroyed VM's checkpoints are still there")
	}
	// Each change is in the audit trail once (the checkpoints a restore
	// takes are the restore's).
	wantEventsOnce(t, d.auditEvents(t), "checkpoint by admin on origin (v1): ok",
		"restore by admin on origin (to v1): ok", "restore by admin on origin (to v2): ok",
		"fork by admin on twin (of origin at v1): ok", "fork by admin on ghost (of origin): ok",
		"checkpoint rm by admin on origin (v9): HTTP 404", "checkpoint rm by admin on origin (v3): ok",
		"destroy by admin on origin: ok", "destroy by admin on twin: ok")
}

// TestCheckpoint_XFS: on a data dir on XFS the daemon keeps VM disks in the
// data dir itself and copies them by reflink: a checkpoint of a VM with 1 GiB
// written grows the host's used space by less than 1 MiB. Restarted with
// --store xfs-loop, the daemon makes the store; the VM made before it stays
// where it is and works (it runs on, takes checkpoints), and a fork of it,
// live, is made in the store.
func TestCheckpoint_XFS(t *testing.T) {
	backing := filepath.Join(t.TempDir(), "xfs.img")
	sh(t, "truncate", "-s", "12G", backing)
	sh(t, "mkfs.xfs", "-q", "-m", "reflink=1", backing)
	dataDir, err := os.MkdirTemp("", "fcm-")
	if err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-o", "loop", backing, dataDir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dataDir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dataDir, err, out)
		}
		os.Remove(dataDir)
	})
	t.Cleanup(func() { unmountStore(t, dataDir) })
	cleanupVMs(t, dataDir)
	d, work := startDaemonHV(t, "qemu", dataDir, "--store", "auto"), t.TempDir()
	if !strings.Contains(d.log(), "kind=dir") || !strings.Contains(d.log(), "reflink=true") {
		t.Fatalf("the daemon on XFS does not keep disks in its data dir with reflinks:\n%s", d.log())
	}
	d.mustCLI(work, "create", "--name", "xfsy", "--no-git")
	d.inVM(work, "xfsy", "dd if=/dev/zero of=/root/big bs=1M count=1024 conv=fsync status=none && sync")
	used := usedOn(t, dataDir)
	d.mustCLI(work, "checkpoint", "create", "xfsy")
	if grew := usedOn(t, dataDir) - used; grew >= 1<<20 {
		t.Errorf("a checkpoint of a disk with 1 GiB written took %d KiB of the host's disk", grew>>10)
	}
	v := d.vms(work)["xfsy"]
	if _, err := os.Stat(filepath.Join(dataDir, "checkpoints", v.ID, "v1", "data.img")); err != nil {
		t.Error(err)
	}

	d.stop(syscall.SIGTERM)
	d = startDaemonHV(t, "qemu", dataDir, "--store", "xfs-loop")
	if !strings.Contains(d.log(), "kind=xfs-loop") {
		t.Fatalf("--store xfs-loop made no store:\n%s", d.log())
	}
	if v := d.vms(work)["xfsy"]; v.State != "running" {
		t.Errorf("the VM made before the store is %s", v.State)
	}
	d.inVM(work, "xfsy", "echo after > /root/after && sync")
	if out := d.mustCLI(work, "checkpoint", "create", "xfsy"); !strings.HasPrefix(out, "Checkpoint v2 created") {
		t.Errorf("a checkpoint of the VM made before the store: %q", out)
	}
	d.mustCLI(work, "fork", "xfsy", "--name", "xfork")
	f := d.vms(work)["xfork"]
	if _, err := os.Stat(filepath.Join(dataDir, vmstore.MountPoint, "vms", f.ID, "data.img")); err != nil {
		t.Errorf("the fork is not in the store: %v", err)
	}
	if got := d.inVM(work, "xfork", "cat /root/after; test -s /root/big && echo big"); got != "after\nbig" {
		t.Errorf("the live fork's files: %q", got)
	}
	d.mustCLI(work, "destroy", "xfsy")
	d.mustCLI(work, "destroy", "xfork")
}
