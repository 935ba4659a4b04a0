package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/image"
)

// waitVM polls fcm ls until VM name satisfies ok, failing after timeout with
// what it last saw.
func (d *daemonProc) waitVM(t *testing.T, dir, name string, timeout time.Duration, what string, ok func(api.VM) bool) api.VM {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, found := d.vms(dir)[name]
		if found && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s not %s within %s: %s (%s), pid %d, events %+v\ndaemon log:\n%s",
				name, what, timeout, v.State, v.Reason, v.PID, v.Events, tail(d.log(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hasEvent says whether v's events hold one of kind whose detail contains s.
func hasEvent(v api.VM, kind, s string) bool {
	for _, e := range v.Events {
		if e.Kind == kind && strings.Contains(e.Detail, s) {
			return true
		}
	}
	return false
}

// TestHeal_HypervisorDeaths kills one VM's hypervisor in the ways a host does
// (kill -9, the OOM killer of its cgroup, at every start) and powers it off
// from inside, checking what its owner sees: it is running again after a
// death, crashed with the reason after five in ten minutes until fcm start,
// and stopped (wanting to be) after its own poweroff.
func TestHeal_HypervisorDeaths(t *testing.T) {
	d, work := daemonWithVM(t, "phoenix")
	v := d.vms(work)["phoenix"]
	if v.Desired != api.DesiredRunning {
		t.Errorf("a new vm's desired state is %q, want running", v.Desired)
	}
	running := func(old int) func(api.VM) bool {
		return func(v api.VM) bool { return v.State == api.StateRunning && v.PID != 0 && v.PID != old }
	}

	t.Run("kill -9 of its hypervisor: running again", func(t *testing.T) {
		old := d.vms(work)["phoenix"].PID
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v := d.waitVM(t, work, "phoenix", 2*time.Minute, "running again", running(old))
		t.Logf("running again (pid %d) %s after the kill", v.PID, time.Since(start).Round(time.Millisecond))
		if !hasEvent(v, "died", "killed by signal 9 (SIGKILL)") || !hasEvent(v, "restarted", "killed by signal 9") {
			t.Errorf("events do not say it was killed and restarted: %+v", v.Events)
		}
		if out := d.inVM(work, "phoenix", "echo answers-$((6*7))"); out != "answers-42" {
			t.Errorf("the restarted vm answered %q", out)
		}
		if log := d.log(); !strings.Contains(log, "vm died; restarting it") || !strings.Contains(log, "vm restarted") {
			t.Errorf("the daemon log does not tell the death and the restart:\n%s", tail(log, 3000))
		}
	})

	t.Run("out of memory: recorded, restarted", func(t *testing.T) {
		v := d.vms(work)["phoenix"]
		// The host lowers the vm's limit under it; the guest then allocates.
		lowerMemoryLimit(t, d.dataDir, v.ID, 64<<20)
		d.inVMErr(work, "phoenix", "head -c 700M /dev/zero | tail > /dev/null")
		v = d.waitVM(t, work, "phoenix", 2*time.Minute, "running again after the oom kill", running(v.PID))
		if !hasEvent(v, "died", "out of memory") {
			t.Errorf("events do not say out of memory: %+v\n%s", v.Events, tail(d.log(), 3000))
		}
	})

	t.Run("killed at every start: crashed after 5 deaths, with the reason", func(t *testing.T) {
		v := d.vms(work)["phoenix"]
		cgroup.SetParent(cgroup.ParentFor(d.dataDir, image.DefaultOutDir)) // the daemon's
		stop := make(chan struct{})
		killed := make(chan int, 1)
		go func() { // kill whatever runs in the vm's cgroup, as soon as it does
			n := 0
			defer func() { killed <- n }()
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				pids, _ := cgroup.Procs(v.ID)
				for _, pid := range pids {
					if syscall.Kill(pid, syscall.SIGKILL) == nil {
						n++
					}
				}
			}
		}()
		v = d.waitVM(t, work, "phoenix", 3*time.Minute, "crashed", func(v api.VM) bool { return v.State == api.StateCrashed })
		close(stop)
		t.Logf("crashed after %d kills: %s", <-killed, v.Reason)
		if !strings.HasPrefix(v.Reason, "crashed 5 times in 10 min: ") || !strings.Contains(v.Reason, "fcm start") {
			t.Errorf("crashed vm's reason: %q", v.Reason)
		}
		if v.Desired != api.DesiredRunning {
			t.Errorf("desired %q, want running (its owner did not stop it)", v.Desired)
		}
		out := d.mustCLI(work, "ls")
		if !strings.Contains(out, "crashed 5 times in 10 min") {
			t.Errorf("fcm ls does not say why:\n%s", out)
		}
		if !strings.Contains(d.log(), "vm died too often; not restarting it") {
			t.Errorf("the daemon log does not tell the give-up:\n%s", tail(d.log(), 3000))
		}
		// It stays down.
		time.Sleep(3 * time.Second)
		if v := d.vms(work)["phoenix"]; v.State != api.StateCrashed {
			t.Errorf("a crashed vm is %s 3 s later", v.State)
		}
		// fcm start tries again, with a fresh count.
		d.mustCLI(work, "start", "phoenix")
		v = d.vms(work)["phoenix"]
		if v.State != api.StateRunning || v.Reason != "" {
			t.Errorf("after fcm start: %s (%s)", v.State, v.Reason)
		}
	})

	t.Run("the guest's own poweroff: stopped, and wants to be", func(t *testing.T) {
		d.inVMErr(work, "phoenix", "poweroff")
		v := d.waitVM(t, work, "phoenix", time.Minute, "stopped", func(v api.VM) bool { return v.State == api.StateStopped })
		if v.Desired != api.DesiredStopped || !hasEvent(v, "poweroff", "powered itself off") {
			t.Errorf("after the guest's poweroff: desired %q, events %+v", v.Desired, v.Events)
		}
		time.Sleep(3 * time.Second)
		if v := d.vms(work)["phoenix"]; v.State != api.StateStopped {
			t.Errorf("3 s after its own poweroff the vm is %s (%s)", v.State, v.Reason)
		}
		if !strings.Contains(d.log(), "vm powered itself off; it stays stopped") {
			t.Errorf("the daemon log does not say so:\n%s", tail(d.log(), 2000))
		}
	})
	d.mustCLI(work, "destroy", "phoenix")
}

// inVMErr runs cmd as root in VM name and returns its output and error (the
// VM may die under it).
func (d *daemonProc) inVMErr(dir, name, cmd string) (string, error) {
	d.t.Helper()
	c := d.guestClient(dir, name)
	defer c.Close()
	ctx, cancel := withTimeout(2 * time.Minute)
	defer cancel()
	out, err := c.Run(ctx, cmd)
	return string(out), err
}

// lowerMemoryLimit sets VM id's cgroup memory limit to what it uses now plus
// room (cgroup v2 or v1; the host has no swap to spill to).
func lowerMemoryLimit(t *testing.T, dataDir, id string, room int64) {
	t.Helper()
	cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir)) // the daemon's
	dirs, err := cgroup.Dirs(id)
	if err != nil {
		t.Fatal(err)
	}
	usage, limit := "memory.current", "memory.max"
	if v, _ := cgroup.Version(); v == 1 {
		usage, limit = "memory.usage_in_bytes", "memory.limit_in_bytes"
	}
	cur, err := os.ReadFile(filepath.Join(dirs[0], usage))
	if err != nil {
		t.Fatal(err)
	}
	used, _ := strconv.ParseInt(strings.TrimSpace(string(cur)), 10, 64)
	os.WriteFile(filepath.Join(dirs[0], "memory.swap.max"), []byte("0"), 0o644)
	if err := os.WriteFile(filepath.Join(dirs[0], limit), []byte(strconv.FormatInt(used+room, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("vm %s: memory limit lowered to %d MiB (it used %d MiB)", id, (used+room)>>20, used>>20)
}
