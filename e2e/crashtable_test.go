package e2e

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// TestDaemon_CrashTable kills the daemon with SIGKILL right after each step
// every operation records (create, start, stop, destroy, suspend, wake,
// checkpoint, restore, and the daemon's own restart of a VM after a host
// restart: the list is vm.Steps, so a new step is a new row), through the
// test-only hook FCM_TEST_CRASH_AT, then restarts it and checks what a user
// would: the VM is running, stopped (start and stop), suspended (suspend and
// wake), running (checkpoint and restore: on a whole disk) or gone (create
// and destroy), nothing leaked (tap, nft element, lease, directory,
// hypervisor, route, a half-made checkpoint or a restore's copy), and the
// operation retried succeeds. The rows share one data dir and one VM, one
// after the other.
func TestDaemon_CrashTable(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	work := t.TempDir()
	const name = "crashy"
	// A real Caddy in front: every row checks the VM's route too.
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	flags := append(edgeFlags(env), "--suspend", "on", "--standbys", "0")
	began, rows := time.Now(), 0
	for _, step := range vm.Steps {
		t.Run(step.String(), func(t *testing.T) {
			rows++
			rowStart := time.Now()
			// The VM in the state the operation starts from, with a daemon of its own.
			d := startDaemonHV(t, "qemu", dataDir, flags...)
			switch step.Op {
			case "create":
				ensureVM(d, work, name, "gone")
			case "start":
				ensureVM(d, work, name, "stopped")
			case "wake":
				ensureVM(d, work, name, "suspended")
			case "restore":
				// A running VM where its hypervisor is killed; a stopped one
				// elsewhere: the disk is what these rows are about, and a
				// stopped VM's restore boots nothing.
				if step.Name == "kill" {
					ensureVM(d, work, name, "running")
				} else {
					ensureVM(d, work, name, "stopped")
				}
			default:
				ensureVM(d, work, name, "running")
			}
			cp := ""
			if step.Op == "restore" {
				// Something to restore: a checkpoint of its own.
				m := regexp.MustCompile(`Checkpoint (v\d+) created`).FindStringSubmatch(d.mustCLI(work, "checkpoint", "create", name))
				if m == nil {
					t.Fatal("fcm checkpoint create printed no id")
				}
				cp = m[1]
			}
			d.stop(syscall.SIGTERM)
			if step.Op == "restart" {
				// A host restart: the hypervisor is gone, and the next daemon
				// boots the VM by itself (and dies at the step).
				killHypervisors(t, dataDir)
			}

			os.Setenv(vm.CrashEnv, step.String())
			d = startDaemonHV(t, "qemu", dataDir, flags...)
			os.Unsetenv(vm.CrashEnv)
			args := []string{step.Op, name}
			switch step.Op {
			case "create":
				args = []string{"create", "--name", name}
			case "wake":
				args = []string{"resume", name}
			case "checkpoint":
				args = []string{"checkpoint", "create", name}
			case "restore":
				args = []string{"restore", name, cp, "--yes"}
			}
			if step.Op != "restart" {
				if out, code := d.cli(work, args...); code == 0 {
					t.Fatalf("fcm %v succeeded although the daemon was to die at %s:\n%s\n%s", args, step, out, d.log())
				}
			}
			assertKilledAt(t, d, step.String())

			d = startDaemonHV(t, "qemu", dataDir, flags...)
			waitSettled(t, d, work, name)
			state := assertNoLeaks(t, d, dataDir, work, name, flags)
			want := map[string]bool{"running": true, "gone": true}
			switch step.Op {
			case "start", "stop":
				want = map[string]bool{"running": true, "stopped": true}
			case "restart":
				// Its owner wants it running: the daemon boots it (once).
				want = map[string]bool{"running": true}
			case "suspend", "wake":
				// Never two hypervisors, never a lost disk: awake or asleep.
				want = map[string]bool{"running": true, "suspended": true}
			case "checkpoint":
				// A guest paused for the copy runs on.
				want = map[string]bool{"running": true}
			case "restore":
				// One whose restore was cut short is as its owner wants it, on
				// a whole disk, the old or the new: booted again if it ran.
				want = map[string]bool{"running": step.Name == "kill", "stopped": step.Name != "kill"}
			}
			if !want[state] {
				t.Fatalf("after a crash at %s and a restart %s is %s", step, name, state)
			}

			// The operation retried succeeds (a destroy that the restart finished
			// has nothing left to retry: its name is free, which the next create
			// proves; a start the restarted daemon finished by itself neither).
			wantAfter := map[string]string{"create": "running", "start": "running", "restart": "running", "stop": "stopped", "destroy": "gone",
				"suspend": "suspended", "wake": "running", "checkpoint": "running", "restore": "running"}[step.Op]
			if step.Op == "restore" && step.Name != "kill" {
				wantAfter = "stopped"
			}
			again := step.Op == "checkpoint" || step.Op == "restore" // it leaves the state as it was
			if !(step.Op == "destroy" && state == "gone") && (state != wantAfter || again) {
				d.mustCLI(work, args...)
			}
			after := assertNoLeaks(t, d, dataDir, work, name, flags)
			if after != wantAfter {
				t.Errorf("after the retried %s %s is %s, want %s", step.Op, name, after, wantAfter)
			}
			assertAnswers(t, env, name, after)
			t.Logf("crash at %s: %s after the restart, %s after the retry (%s)", step, state, after, time.Since(rowStart).Round(time.Second))
		})
	}
	t.Logf("crash table: %d rows of %d steps in %s", rows, len(vm.Steps), time.Since(began).Round(time.Second))
	d := startDaemonHV(t, "qemu", dataDir, flags...)
	ensureVM(d, work, name, "gone")
}

// killHypervisors kills every hypervisor of dataDir's VMs with -9 and waits
// until they are gone, as a host's power cut does.
func killHypervisors(t *testing.T, dataDir string) {
	t.Helper()
	for _, pid := range procsMentioning(filepath.Join(dataDir, "vms") + "/") {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(procsMentioning(filepath.Join(dataDir, "vms")+"/")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hypervisors still run 10 s after kill -9: %v", procsMentioning(filepath.Join(dataDir, "vms")+"/"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSettled waits until VM name is no longer on its way somewhere
// (starting, restarting, stopping): the daemon finishes what its owner asked
// for by itself after a crash.
func waitSettled(t *testing.T, d *daemonProc, work, name string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		v, ok := d.vms(work)[name]
		if !ok || v.State != api.StateStarting && v.State != api.StateRestarting && v.State != api.StateStopping {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %s (%s) 3 min after the restart:\n%s", name, v.State, v.Reason, tail(d.log(), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ensureVM brings VM name to state (running, stopped or gone) with ordinary
// commands.
func ensureVM(d *daemonProc, work, name, state string) {
	d.t.Helper()
	v, ok := d.vms(work)[name]
	cur := "gone"
	if ok {
		cur = v.State
	}
	if cur == state {
		return
	}
	if cur == "suspended" && state != "gone" {
		d.mustCLI(work, "resume", name)
		cur = "running"
		if cur == state {
			return
		}
	}
	switch state {
	case "suspended":
		ensureVM(d, work, name, "running")
		d.mustCLI(work, "suspend", name)
	case "gone":
		d.mustCLI(work, "destroy", name)
	case "stopped":
		if !ok {
			d.mustCLI(work, "create", "--name", name)
		}
		d.mustCLI(work, "stop", name)
	case "running":
		if !ok {
			d.mustCLI(work, "create", "--name", name)
		} else {
			d.mustCLI(work, "start", name)
		}
	}
}

// assertKilledAt checks that the daemon died of SIGKILL from the test hook at step.
func assertKilledAt(t *testing.T, d *daemonProc, step string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.cmd.ProcessState == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon still runs after the crash hook at %s:\n%s", step, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ws, _ := d.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the daemon ended with %v, not SIGKILL:\n%s", d.cmd.ProcessState, d.log())
	}
	if !strings.Contains(d.log(), "at="+step) {
		t.Fatalf("the daemon did not die at the hook's step %s:\n%s", step, d.log())
	}
}

// assertNoLeaks checks that the host holds exactly what VM name's state needs
// and returns that state ("gone" when there is no VM): its tap, nft element,
// directory, hypervisor and lease when running; its directory and lease when
// stopped; nothing when gone; and never an interrupted operation. Its route
// in Caddy is the state's (assertRoute). To read the store it stops the
// daemon and starts another (with flags), which it returns through d.
func assertNoLeaks(t *testing.T, d *daemonProc, dataDir, work, name string, flags []string) string {
	t.Helper()
	vms := d.vms(work)
	v, exists := vms[name]
	state := "gone"
	if exists {
		state = v.State
	}
	if len(vms) > 1 || (exists && state != "running" && state != "stopped" && state != "suspended") {
		t.Fatalf("vms after the restart: %+v", vms)
	}

	var wantTaps, wantDirs, wantElems []string
	wantLeases := map[string]string{}
	if exists {
		wantDirs = []string{v.ID}
		wantLeases[v.IP] = v.ID
	}
	if state == "running" || state == "suspended" { // a suspended vm keeps its tap
		wantTaps, wantElems = []string{"tap_" + v.ID}, []string{v.IP}
	}
	assertRoute(t, name, state, v.IP)
	if got := linksNamed("tap_"); !equal(got, wantTaps) {
		t.Errorf("taps: %v, want %v", got, wantTaps)
	}
	if got := subnetElements(t); !equal(got, wantElems) {
		t.Errorf("nft elements in the vm set: %v, want %v", got, wantElems)
	}
	var dirs []string
	entries, _ := os.ReadDir(filepath.Join(dataDir, "vms"))
	for _, e := range entries {
		dirs = append(dirs, e.Name())
	}
	if !equal(dirs, wantDirs) {
		t.Errorf("vm dirs: %v, want %v", dirs, wantDirs)
	}
	assertOneBase(t, dataDir)
	assertWholeCheckpoints(t, dataDir, wantDirs)
	pids := procsMentioning(filepath.Join(dataDir, "vms") + "/")
	if state == "running" && len(pids) != 1 || state != "running" && len(pids) != 0 {
		t.Errorf("hypervisors of the data dir: %v with %s %s", pids, name, state)
	}
	if out, _ := exec.Command("ip", "-o", "route").Output(); strings.Contains(string(out), "tap_") {
		t.Errorf("routes through a tap:\n%s", out)
	}
	// A cgroup only for a running VM's hypervisor (this daemon's parent cgroup).
	cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir))
	var wantGroups []string
	if state == "running" {
		wantGroups = []string{v.ID}
	}
	if got, err := cgroup.List(); err != nil || !equal(got, wantGroups) {
		t.Errorf("vm cgroups: %v (%v), want %v", got, err, wantGroups)
	}

	// Leases and interrupted operations, from the store itself.
	d.stop(syscall.SIGTERM)
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st.View(func(tx *store.Tx) error {
		leases, _ := tx.Leases()
		got := map[string]string{}
		for ip, id := range leases {
			got[ip.String()] = id
		}
		if len(got) != len(wantLeases) || (exists && got[v.IP] != v.ID) {
			t.Errorf("leases: %v, want %v", got, wantLeases)
		}
		if ops, _ := tx.Ops(); len(ops) != 0 {
			t.Errorf("operations left in the store: %+v", ops)
		}
		return nil
	})
	st.Close()
	*d = *startDaemonHV(t, "qemu", dataDir, flags...)
	return state
}

// assertRoute waits (the daemon syncs Caddy by itself) until VM name's route
// in Caddy is its state's: straight to its address when running, to the
// daemon's waker with the daemon's wake header when suspended, a 503 page
// when stopped, none when gone.
func assertRoute(t *testing.T, name, state, ip string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got = routeKind(caddyServer(t), name, ip)
		if got == state || time.Now().After(deadline) {
			break
		}
	}
	if got != state {
		t.Errorf("the route of %s (%s) in Caddy is %s's", name, state, got)
	}
}

// routeKind says which state VM name's route in server serves: running,
// suspended, stopped or gone (no route), or what it is otherwise.
func routeKind(server map[string]any, name, ip string) string {
	routes, _ := server["routes"].([]any)
	for _, r := range routes {
		route, _ := r.(map[string]any)
		if route["@id"] != edge.RouteID(name) {
			continue
		}
		b, _ := json.Marshal(route["handle"])
		h := string(b)
		switch {
		case strings.Contains(h, `"dial":"`+ip+`:`):
			return "running"
		case strings.Contains(h, `"`+edge.WakeHeader+`":`):
			return "suspended"
		case strings.Contains(h, `"static_response"`) && strings.Contains(h, "is stopped"):
			return "stopped"
		}
		return "unknown: " + h
	}
	return "gone"
}

// assertAnswers checks what a user sees at VM name's URL in state: its page
// when running, or suspended (the request wakes it); a page saying it is
// stopped when stopped.
func assertAnswers(t *testing.T, env *edgetest.Env, name, state string) {
	t.Helper()
	url := "https://" + name + "." + edgeDomain + "/"
	// waitCurl: a new VM's certificate may still be on its way.
	switch state {
	case "running", "suspended":
		if body, _ := waitCurl(t, env, url, "200", "--max-time", "60"); !strings.Contains(body, name) {
			t.Errorf("%s (%s) answered %q", url, state, body)
		}
	case "stopped":
		if body, _ := waitCurl(t, env, url, "503"); !strings.Contains(body, "is stopped") {
			t.Errorf("%s (stopped) answered %q", url, body)
		}
	}
}

func linksNamed(prefix string) []string {
	var names []string
	links, _ := net.Interfaces()
	for _, l := range links {
		if strings.HasPrefix(l.Name, prefix) {
			names = append(names, l.Name)
		}
	}
	return names
}

// subnetElements lists the daemon subnet's addresses in fcm's nft set of VMs.
func subnetElements(t *testing.T) []string {
	var got []string
	prefix := netip.MustParsePrefix(daemonSubnet)
	for _, f := range strings.FieldsFunc(nftElements(t), func(r rune) bool { return strings.ContainsRune(" ,{}\n\t", r) }) {
		if a, err := netip.ParseAddr(f); err == nil && prefix.Contains(a) {
			got = append(got, a.String())
		}
	}
	return got
}

func equal(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// assertOneBase checks the data dir's images: exactly the test image, stored
// whole (the same file as the image's, by hard link) under its id, nothing
// half-imported or half-pruned; and no half-made disk template.
func assertOneBase(t *testing.T, dataDir string) {
	t.Helper()
	m, err := image.ReadManifest(imageDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	entries, _ := os.ReadDir(filepath.Join(dataDir, "images"))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !equal(names, []string{m.ID}) {
		t.Errorf("images: %v, want only %s", names, m.ID)
		return
	}
	for _, f := range []string{image.KernelFile, image.InitrdFile, image.RootfsFile} {
		a, err1 := os.Stat(filepath.Join(dataDir, "images", m.ID, f))
		b, err2 := os.Stat(filepath.Join(imageDir, f))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("base %s: %s is not the image's own file (%v, %v)", m.ID[:12], f, err1, err2)
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(dataDir, "templates", ".*"))
	if len(tmps) > 0 {
		t.Errorf("half-made disk templates: %v", tmps)
	}
}

// assertWholeCheckpoints checks that only VMs in ids have checkpoints, none
// of them half made, and that no restore left its copy of a disk behind.
func assertWholeCheckpoints(t *testing.T, dataDir string, ids []string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(dataDir, "checkpoints"))
	for _, e := range entries {
		if !slices.Contains(ids, e.Name()) {
			t.Errorf("checkpoints of a VM that is gone: %s", e.Name())
		}
		cps, _ := os.ReadDir(filepath.Join(dataDir, "checkpoints", e.Name()))
		for _, c := range cps {
			if !regexp.MustCompile(`^v\d+$`).MatchString(c.Name()) {
				t.Errorf("a checkpoint a crash left half made: %s/%s", e.Name(), c.Name())
			}
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dataDir, "vms", "*", "*.restore")); len(left) > 0 {
		t.Errorf("a restore's copy left behind: %v", left)
	}
}
