package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// TestQEMU_SuspendRestore: a guest with its RAM in a memory file is suspended
// (its QEMU exits, leaving a small state file) and restored from the same
// files: the same boot, its process still running, its files there.
func TestQEMU_SuspendRestore(t *testing.T) {
	t.Parallel() // a VM of its own on fcm0, no daemon: beside TestDeploy_Runtimes
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := newVM(t, "susp0001", "sleepy", net.IPv4(172, 16, 0, 61))
	v.spec.MemoryFile = filepath.Join(v.spec.Dir, "mem.ram")
	inst := v.boot(t, d)
	bootID := v.run(t, "cat /proc/sys/kernel/random/boot_id")
	pid := v.run(t, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/tick.new; mv /root/tick.new /root/tick; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $!")
	v.run(t, "echo kept > /root/file; sync")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	began := time.Now()
	if err := d.Suspend(ctx, inst, v.spec); err != nil {
		t.Fatal(err)
	}
	t.Logf("suspended in %s", time.Since(began).Round(time.Millisecond))
	if inst.Running() {
		t.Fatal("qemu still runs after the suspend")
	}
	st, err := os.Stat(filepath.Join(v.spec.Dir, vmm.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("state file %d KiB", st.Size()>>10)
	v.client.Close()

	time.Sleep(2 * time.Second)
	began = time.Now()
	restored, err := d.Restore(ctx, v.spec)
	if err != nil {
		t.Fatalf("%v\nqemu log:\n%s", err, readFile(filepath.Join(v.spec.Dir, qemu.LogFile)))
	}
	if err := restored.(vmm.Pauser).Resume(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { restored.Kill(); restored.Wait(context.Background()) })
	if err := v.client.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := v.run(t, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("boot id %s after the restore, was %s: the guest booted again", got, bootID)
	}
	if got := v.run(t, "kill -0 "+pid+" && echo alive"); got != "alive" {
		t.Errorf("the guest's process %s after the restore: %q", pid, got)
	}
	if got := v.run(t, "cat /root/file"); got != "kept" {
		t.Errorf("the guest's file after the restore: %q", got)
	}
	// The loop goes on.
	t1, _ := strconv.Atoi(v.run(t, "cat /root/tick"))
	time.Sleep(time.Second)
	t2, _ := strconv.Atoi(v.run(t, "cat /root/tick"))
	if t2 <= t1 {
		t.Errorf("the guest's loop does not run after the restore: tick %d then %d", t1, t2)
	}

	// Again, into a QEMU started ahead (Standby): it waits without running
	// the guest, and the restore skips QEMU's start.
	if err := d.Suspend(ctx, restored, v.spec); err != nil {
		t.Fatal(err)
	}
	v.client.Close()
	standby, err := d.Standby(ctx, v.spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Kill(); standby.Wait(context.Background()) })
	if st, err := standby.(*qemu.Instance).Status(ctx); err != nil || st != vmm.StandbyStatus {
		t.Errorf("a standby QEMU's status: %q %v, want %s", st, err, vmm.StandbyStatus)
	}
	t.Logf("a standby QEMU holds %s", vmRSS(standby.PID()))
	began = time.Now()
	if err := d.RestoreInto(ctx, standby, v.spec); err != nil {
		t.Fatalf("%v\nqemu log:\n%s", err, readFile(filepath.Join(v.spec.Dir, qemu.LogFile)))
	}
	if err := standby.(vmm.Pauser).Resume(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored into the standby in %s", time.Since(began).Round(time.Millisecond))
	if err := v.client.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := v.run(t, "cat /proc/sys/kernel/random/boot_id; kill -0 "+pid+" && echo alive"); got != bootID+"\nalive" {
		t.Errorf("after the restore into the standby: %q", got)
	}
}

// TestSuspend_Resume: fcm suspend ends a VM's hypervisor and keeps the VM
// (name, address, tap, disk); a request to its URL through the real Caddy
// wakes it where it was: the same boot, its process running on, its file
// there, its clock right. Commands wake it too, and so does fcm resume. With
// both hypervisors (Firecracker: the stand-in, every call checked against
// its API spec).
func TestSuspend_Resume(t *testing.T) {
	for _, hv := range hypervisors {
		t.Run(hv, func(t *testing.T) { suspendResume(t, hv) })
	}
}

func suspendResume(t *testing.T, hv string) {
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	flags := append(edgeFlags(env), "--suspend", "on")
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d, work := startDaemonHV(t, hv, dataDir, flags...), t.TempDir()
	defer func() {
		// Every suspend and resume asked for is in the audit trail, in order
		// (wakes on a request are nobody's change).
		var got []string
		for _, e := range d.auditEvents(t, "dozy") {
			got = append(got, eventKey(e))
		}
		want := []string{"create by admin on dozy: ok", "suspend by admin on dozy: ok", "suspend by admin on dozy: HTTP 409"}
		rounds := 2
		if hv == "qemu" {
			rounds = 3 // and one woken by a standby QEMU
		}
		for range rounds {
			want = append(want, "suspend by admin on dozy: ok", "resume by admin on dozy: ok")
		}
		want = append(want, "suspend by admin on dozy: ok", "stop by admin on dozy: ok", "start by admin on dozy: ok", "destroy by admin on dozy: ok")
		if !slices.Equal(got, want) {
			t.Errorf("dozy's audit trail:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}()
	d.mustCLI(work, "create", "--name", "dozy")
	url := "https://dozy." + edgeDomain + "/"
	waitCurl(t, env, url, "200")
	if hv == "firecracker" {
		defer checkContract(t, dataDir)
	}
	bootID := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id")
	if hv == "qemu" {
		// Its RAM is a file allocated whole at boot: a full host disk cannot
		// take its blocks from under the guest (SIGBUS).
		v := d.vms(work)["dozy"]
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dataDir, "vms", v.ID, "mem.ram"), &st); err != nil || st.Size != int64(v.MemoryMiB)<<20 || st.Blocks*512 < st.Size {
			t.Errorf("the vm's memory file: %v, %d bytes, %d allocated; want %d MiB, all allocated", err, st.Size, st.Blocks*512, v.MemoryMiB)
		}
	}
	pid := d.inVM(work, "dozy", "setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $!")
	d.inVM(work, "dozy", "echo kept > /root/file")
	before := d.vms(work)["dozy"]

	out := d.mustCLI(work, "suspend", "dozy")
	if !strings.HasPrefix(out, "dozy is suspended (") {
		t.Errorf("fcm suspend said %q", out)
	}
	v := d.vms(work)["dozy"]
	if v.State != api.StateSuspended || v.PID != 0 || v.SuspendedAt == nil || v.IP != before.IP {
		t.Errorf("after fcm suspend: %s, pid %d, suspended at %v, ip %s", v.State, v.PID, v.SuspendedAt, v.IP)
	}
	if before.PID > 0 && syscall.Kill(before.PID, 0) == nil {
		t.Errorf("the suspended vm's hypervisor (pid %d) still runs", before.PID)
	}
	if hv == "qemu" {
		// The last suspended VMs keep a QEMU waiting for their wake (--standbys).
		d.waitLog("standby hypervisor waits for the vm's wake")
		pids := procsMentioning(filepath.Join(d.dataDir, "vms") + "/")
		if len(pids) != 1 || !strings.Contains(readFile(fmt.Sprintf("/proc/%d/cmdline", pids[0])), "-incoming\x00defer") {
			t.Errorf("processes of a suspended vm: %v, want its standby QEMU only", pids)
		} else {
			t.Logf("the standby QEMU holds %s", vmRSS(pids[0]))
		}
	} else if pids := procsMentioning(filepath.Join(d.dataDir, "vms") + "/"); len(pids) != 0 {
		t.Errorf("hypervisors of a suspended vm: %v", pids)
	}
	if !tapExists("tap_" + v.ID) {
		t.Error("a suspended vm lost its tap")
	}
	// A second suspend, a start: refused with a clear error.
	if out, code := d.cli(work, "suspend", "dozy"); code == 0 || !strings.Contains(out, "suspended") {
		t.Errorf("fcm suspend of a suspended vm: exit %d: %s", code, out)
	}

	time.Sleep(3 * time.Second) // the guest's clock stands still meanwhile

	// A request to its URL, through the real Caddy, wakes it and is answered.
	if body, status := curl(t, env, url, "--max-time", "60"); !strings.HasPrefix(status, "200") || !strings.Contains(body, "dozy") {
		t.Errorf("a request to the suspended vm: %s %q\ndaemon log:\n%s", status, body, tail(d.log(), 2000))
	}
	if !strings.Contains(d.log(), "waker: vm woken by a request") {
		t.Errorf("the request did not wake the vm through the waker:\n%s", tail(d.log(), 2000))
	}
	if hv == "qemu" && !strings.Contains(d.log(), "vm restored into its standby hypervisor") {
		t.Errorf("the wake did not use the standby QEMU:\n%s", tail(d.log(), 2000))
	}
	if got := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("boot id %s after the wake, was %s: the guest booted again", got, bootID)
	}
	if got := d.inVM(work, "dozy", "kill -0 "+pid+" && echo alive; cat /root/file"); got != "alive\nkept" {
		t.Errorf("after the wake the guest's process and file: %q", got)
	}
	v = d.vms(work)["dozy"]
	if v.State != api.StateRunning || v.PID == 0 {
		t.Errorf("after the wake: %s, pid %d", v.State, v.PID)
	}
	// The daemon sets the woken guest's clock: within 1 s of the host's.
	deadline := time.Now().Add(15 * time.Second)
	for {
		before := time.Now()
		guestNow, _ := strconv.ParseFloat(d.inVM(work, "dozy", "date +%s.%N"), 64)
		after := time.Now()
		g := time.Unix(0, int64(guestNow*1e9))
		if g.After(before.Add(-time.Second)) && g.Before(after.Add(time.Second)) {
			t.Logf("the guest's clock is %s from the host's", g.Sub(before.Add(after.Sub(before)/2)).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the woken guest's clock is %s off the host's", g.Sub(before).Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(readFile(filepath.Join(d.dataDir, "vms", v.ID, "console.log")), " resumed (the clock moved") {
		t.Error("fcm-init logged no resumed stage on the console")
	}
	// Commands that reach into a vm wake it first, saying so.
	d.mustCLI(work, "suspend", "dozy")
	if out, _ := d.cli(work, "ps", "dozy"); !strings.Contains(out, "Waking dozy... ") {
		t.Errorf("fcm ps of a suspended vm did not say it woke it:\n%s", out)
	}
	if v := d.vms(work)["dozy"]; v.State != api.StateRunning {
		t.Errorf("after fcm ps of a suspended vm it is %s", v.State)
	}
	if got := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("fcm ps booted the vm afresh instead of waking it")
	}
	if hv == "qemu" {
		// The daemon killed (kill -9) with a standby waiting: its next run
		// takes the standby back, and the wake uses it.
		const ready = "standby hypervisor waits for the vm's wake"
		n := strings.Count(d.log(), ready)
		d.mustCLI(work, "suspend", "dozy")
		for deadline := time.Now().Add(20 * time.Second); strings.Count(d.log(), ready) == n; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no standby after the suspend:\n%s", tail(d.log(), 2000))
			}
		}
		d.stop(syscall.SIGKILL)
		d = startDaemonHV(t, hv, dataDir, flags...)
		if !strings.Contains(d.log(), "re-adopted a standby hypervisor") {
			t.Errorf("the restarted daemon did not take the standby back:\n%s", tail(d.log(), 2000))
		}
		if out := d.mustCLI(work, "resume", "dozy"); !strings.HasPrefix(out, "dozy is running again (") {
			t.Errorf("fcm resume said %q", out)
		}
		if !strings.Contains(d.log(), "vm restored into its standby hypervisor") {
			t.Errorf("the wake after the daemon's restart did not use the standby:\n%s", tail(d.log(), 2000))
		}
		if pids := procsMentioning(filepath.Join(d.dataDir, "vms") + "/"); len(pids) != 1 {
			t.Errorf("hypervisors after the wake: %v, want 1", pids)
		}
		if got := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("the wake after the daemon's restart booted the vm afresh")
		}
	}
	// Its disk changed on the host while it slept: the image cannot be used,
	// and the wake boots it cold, saying why.
	d.mustCLI(work, "suspend", "dozy")
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(d.dataDir, "vms", v.ID, "data.img"), later, later); err != nil {
		t.Fatal(err)
	}
	if out := d.mustCLI(work, "resume", "dozy"); !strings.HasPrefix(out, "dozy is running again (") {
		t.Errorf("fcm resume said %q", out)
	}
	v = d.vms(work)["dozy"]
	if n := len(v.Events); v.State != api.StateRunning || n == 0 || v.Events[n-1].Kind != "woke-cold" ||
		!strings.Contains(v.Events[n-1].Detail, "its disk changed on the host since it was suspended (data.img)") {
		t.Errorf("a wake after the disk changed: %s, events %+v", v.State, v.Events)
	}
	coldID := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id")
	if coldID == bootID {
		t.Errorf("a wake after the disk changed used the stale image")
	}
	if got := d.inVM(work, "dozy", "cat /root/file"); got != "kept" {
		t.Errorf("after the cold wake the guest's file: %q", got)
	}
	bootID = coldID
	// A stop, then a start: a cold boot, whatever it slept through.
	d.mustCLI(work, "suspend", "dozy")
	d.mustCLI(work, "stop", "dozy")
	if pids := procsMentioning(filepath.Join(d.dataDir, "vms") + "/"); len(pids) != 0 {
		t.Errorf("processes of a stopped vm (its standby?): %v", pids)
	}
	d.mustCLI(work, "start", "dozy")
	if got := d.inVM(work, "dozy", "cat /proc/sys/kernel/random/boot_id"); got == bootID {
		t.Errorf("a start after a stop of a suspended vm did not boot afresh")
	}
	d.mustCLI(work, "destroy", "dozy")
}

// TestSuspend_WakeOnRequest: requests through the real Caddy to a suspended
// VM's URL wake it, once however many arrive together, and are all
// answered; the idle policy (idlePolicy) and memory pressure
// (memoryPressure) suspend it by themselves; a wake that fails answers 503
// with Retry-After and leaves the VM stopped, and fcm start then boots it
// cold.
func TestSuspend_WakeOnRequest(t *testing.T) {
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, "qemu", dataDir, append(edgeFlags(env), "--suspend", "on")...)
	work := t.TempDir()
	d.mustCLI(work, "create", "--name", "napper", "--no-git")
	url := "https://napper." + edgeDomain + "/"
	waitCurl(t, env, url, "200")
	bootID := d.inVM(work, "napper", "cat /proc/sys/kernel/random/boot_id")

	d.mustCLI(work, "suspend", "napper")
	const n = 50
	type answer struct{ body, status string }
	answers := make(chan answer, n)
	for i := 0; i < n; i++ {
		go func() {
			body, status := curl(t, env, url, "--max-time", "60")
			answers <- answer{body, status}
		}()
	}
	ok := 0
	for i := 0; i < n; i++ {
		a := <-answers
		if strings.HasPrefix(a.status, "200") && strings.Contains(a.body, "napper") {
			ok++
		} else {
			t.Errorf("a request to the suspended vm: %s %q", a.status, a.body)
		}
	}
	if ok != n {
		t.Fatalf("%d of %d requests answered\ndaemon log:\n%s", ok, n, tail(d.log(), 3000))
	}
	if c := strings.Count(d.log(), "waker: vm woken by a request"); c != 1 {
		t.Errorf("%d wakes for %d requests, want 1", c, n)
	}
	if v := d.vms(work)["napper"]; v.State != api.StateRunning {
		t.Errorf("after the requests the vm is %s", v.State)
	}
	if got := d.inVM(work, "napper", "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("the vm booted again instead of waking")
	}
	idlePolicy(t, d, env, work, "napper", url, bootID)
	d = memoryPressure(t, d, env, work, "napper", url)

	// A wake that fails: its saved state is damaged.
	d.mustCLI(work, "suspend", "napper")
	v := d.vms(work)["napper"]
	if err := os.WriteFile(filepath.Join(dataDir, "vms", v.ID, vmm.StateFile), []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	body, status := curl(t, env, url, "-D", "-", "--max-time", "60")
	if !strings.HasPrefix(status, "503") || !strings.Contains(strings.ToLower(body), "retry-after: 5") {
		t.Errorf("a request whose wake failed: %s\n%s", status, body)
	}
	v = d.waitVM(t, work, "napper", time.Minute, "stopped", func(v api.VM) bool { return v.State == api.StateStopped })
	if !strings.Contains(v.Reason, "wake") || !strings.Contains(v.Reason, "fcm start boots it cold") {
		t.Errorf("a vm whose wake failed: %s (%s)", v.State, v.Reason)
	}
	d.mustCLI(work, "start", "napper")
	waitCurl(t, env, url, "200")
	if got := d.inVM(work, "napper", "cat /proc/sys/kernel/random/boot_id"); got == bootID {
		t.Errorf("the start after a failed wake did not boot afresh")
	}
	d.mustCLI(work, "destroy", "napper")
}
