package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCheckpoint_Create: a checkpoint of a running VM is taken live (the same
// boot, its process running on) and holds the disk as it was: a file written
// before it is in its copy of the disk, and a new checkpoint takes next to no
// host space (a reflink, or a sparse copy on a store without one); fcm
// checkpoint ls lists it with its message; rm removes it.
func TestCheckpoint_Create(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d, work := startDaemonHV(t, "qemu", dataDir), t.TempDir()
	d.mustCLI(work, "create", "--name", "saver", "--no-git")
	bootID := d.inVM(work, "saver", "cat /proc/sys/kernel/random/boot_id")
	pid := d.inVM(work, "saver", "setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $!")
	d.inVM(work, "saver", "echo before > /root/marker")

	out := d.mustCLI(work, "checkpoint", "create", "saver", "-m", "before the upgrade")
	if !regexp.MustCompile(`^Checkpoint v1 created \(\d+ms\)\n$`).MatchString(out) {
		t.Errorf("fcm checkpoint create said %q", out)
	}
	if got := d.inVM(work, "saver", "cat /proc/sys/kernel/random/boot_id; kill -0 "+pid+" && echo alive"); got != bootID+"\nalive" {
		t.Errorf("after the checkpoint: %q", got)
	}
	v := d.vms(work)["saver"]
	cp := filepath.Join(dataDir, "vms", v.ID, "checkpoints", "v1", "data.img")
	if _, err := os.Stat(cp); err != nil {
		t.Fatal(err)
	}
	var cps []struct{ ID, Message, By string }
	if err := json.Unmarshal([]byte(d.mustCLI(work, "checkpoint", "ls", "saver", "--json")), &cps); err != nil || len(cps) != 1 ||
		cps[0].ID != "v1" || cps[0].Message != "before the upgrade" || cps[0].By != "admin" {
		t.Errorf("fcm checkpoint ls --json: %+v (%v)", cps, err)
	}
	if out := d.mustCLI(work, "checkpoint", "ls", "saver"); !strings.Contains(out, "v1") || !strings.Contains(out, "before the upgrade") {
		t.Errorf("fcm checkpoint ls:\n%s", out)
	}
	if out, code := d.cli(work, "checkpoint", "rm", "saver", "v9"); code == 0 || !strings.Contains(out, "no checkpoint v9") {
		t.Errorf("fcm checkpoint rm of a missing one: exit %d: %s", code, out)
	}
	d.mustCLI(work, "checkpoint", "rm", "saver", "v1")
	if _, err := os.Stat(filepath.Dir(cp)); err == nil {
		t.Error("the removed checkpoint's directory is still there")
	}
	if out := d.mustCLI(work, "checkpoint", "create", "saver"); !strings.HasPrefix(out, "Checkpoint v2 created") {
		t.Errorf("the next checkpoint after v1's removal: %q", out)
	}
	d.mustCLI(work, "destroy", "saver")
}
