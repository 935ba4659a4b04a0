package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
)

// stays fails the test if VM name leaves state running during d.
func (d *daemonProc) stays(t *testing.T, work, name string, dur time.Duration, why string) {
	t.Helper()
	for end := time.Now().Add(dur); time.Now().Before(end); time.Sleep(time.Second) {
		if v := d.vms(work)[name]; v.State != api.StateRunning {
			t.Fatalf("%s: the vm is %s (%s), want it kept running", why, v.State, v.Reason)
		}
	}
}

// sleepsByItself waits for VM name to be suspended by the daemon for being
// idle (SuspendAfter), and checks it says so.
func (d *daemonProc) sleepsByItself(t *testing.T, work, name string, after time.Duration) {
	t.Helper()
	began := time.Now()
	v := d.waitVM(t, work, name, after+30*time.Second, "suspended by itself", func(v api.VM) bool { return v.State == api.StateSuspended })
	t.Logf("%s suspended by itself %s after the test stopped using it", name, time.Since(began).Round(100*time.Millisecond))
	want := "idle for " + api.FormatSuspendAfter(after)
	if v.Reason != want {
		t.Errorf("a vm suspended for being idle: reason %q, want %q", v.Reason, want)
	}
	if n := len(v.Events); n == 0 || v.Events[n-1].Kind != "suspended" || v.Events[n-1].Detail != want {
		t.Errorf("a vm suspended for being idle: events %+v, want suspended (%s) last", v.Events, want)
	}
	if out := d.mustCLI(work, "ls"); !strings.Contains(out, "suspended") || !strings.Contains(out, want) {
		t.Errorf("fcm ls of a vm suspended for being idle:\n%s", out)
	}
}

// idlePolicy: a VM with --suspend-after sleeps by itself once nothing uses
// it; an attached console and requests through its URL keep it awake; a
// console attach to it asleep wakes it and shows its tmux session as it
// was; fcm update changes the idle time. VM name runs and has an edge URL.
func idlePolicy(t *testing.T, d *daemonProc, env *edgetest.Env, work, name, url, bootID string) {
	const after = 10 * time.Second
	if out := d.mustCLI(work, "update", name, "--suspend-after", "10s"); !strings.Contains(out, name+" sleeps after 10s idle") {
		t.Errorf("fcm update --suspend-after 10s: %q", out)
	}
	if out, code := d.cli(work, "update", name, "--suspend-after", "soon"); code == 0 || !strings.Contains(out, "want a duration such as 30s") {
		t.Errorf("fcm update --suspend-after soon: exit %d, %q", code, out)
	}
	if v := d.vms(work)[name]; v.SuspendAfter != "10s" {
		t.Errorf("the api's suspend_after: %q, want 10s", v.SuspendAfter)
	}

	// A console attached keeps it awake.
	c := &client.Client{Host: "http://" + daemonListen, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.CreateSession(ctx, name, "work"); err != nil {
		t.Fatal(err)
	}
	attach := "ws://" + daemonListen + "/v1/vms/" + name + "/sessions/work/attach?cols=80&rows=24"
	ws, _ := dialConsole(ctx, t, attach, d.token())
	readUntil(ctx, t, ws, "root@"+name)
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("echo marker-$((6*7))\r")); err != nil {
		t.Fatal(err)
	}
	readUntil(ctx, t, ws, "marker-42")
	d.stays(t, work, name, after+5*time.Second, "a console attached")
	ws.Close(websocket.StatusNormalClosure, "")
	d.sleepsByItself(t, work, name, after)

	// A console attach wakes it, with the session as it was.
	ws, _ = dialConsole(ctx, t, attach, d.token())
	readUntil(ctx, t, ws, "marker-42")
	ws.Close(websocket.StatusNormalClosure, "")
	if got := d.inVM(work, name, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("the console's wake booted the vm again")
	}

	// Requests through its URL keep it awake.
	for end := time.Now().Add(after + 5*time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		if _, status := curl(t, env, url); !strings.HasPrefix(status, "200") {
			t.Errorf("a request to the awake vm: %s", status)
		}
		if v := d.vms(work)[name]; v.State != api.StateRunning {
			t.Fatalf("requests every 2 s: the vm is %s (%s), want it kept running", v.State, v.Reason)
		}
	}
	d.sleepsByItself(t, work, name, after)
	if _, status := curl(t, env, url, "--max-time", "60"); !strings.HasPrefix(status, "200") {
		t.Errorf("a request to the vm asleep: %s", status)
	}

	if out := d.mustCLI(work, "update", name, "--suspend-after", "off"); !strings.Contains(out, name+" never sleeps by itself") {
		t.Errorf("fcm update --suspend-after off: %q", out)
	}
	d.stays(t, work, name, after+3*time.Second, "--suspend-after off")
}

// memTotalMiB is the host's memory as the daemon reads it.
func memTotalMiB(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatal(err)
			}
			return kib >> 10
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// memoryPressure: on a host with memory for VM name and one of 512 MiB
// more (a --memory-reserve of the rest), a second create suspends the least
// recently used VM that may sleep, and fits; a wake makes room the same way.
// VM name runs.
func memoryPressure(t *testing.T, d *daemonProc, env *edgetest.Env, work, name, url string) *daemonProc {
	mem := d.vms(work)[name].MemoryMiB
	d.stop(syscall.SIGTERM)
	d = startDaemonHV(t, "qemu", d.dataDir, append(edgeFlags(env), "--suspend", "on",
		"--memory-reserve", fmt.Sprint(memTotalMiB(t)-mem-512-100))...)
	d.mustCLI(work, "update", name, "--suspend-after", "1h")
	create := []string{"create", "--no-git", "--memory", "512"}
	d.mustCLI(work, append(create, "--name", "second", "--suspend-after", "1h")...)
	out, code := d.cli(work, append(create, "--name", "third", "--suspend-after", "off")...)
	if code != 0 || !strings.Contains(out, "VM created: third") {
		t.Fatalf("a create with the host's memory taken by vms that may sleep: exit %d\n%s\ndaemon log:\n%s", code, out, tail(d.log(), 3000))
	}
	vms := d.vms(work)
	if v := vms[name]; v.State != api.StateSuspended || v.Reason != "suspended early: the host needed its memory" {
		t.Errorf("the least recently used vm: %s (%s), want suspended early", v.State, v.Reason)
	}
	if v := vms["second"]; v.State != api.StateRunning {
		t.Errorf("the vm used since: %s (%s), want running", v.State, v.Reason)
	}
	// A request wakes name: second, idle longest now, makes room.
	if _, status := curl(t, env, url, "--max-time", "60"); !strings.HasPrefix(status, "200") {
		t.Errorf("a request to the vm suspended early: %s\ndaemon log:\n%s", status, tail(d.log(), 3000))
	}
	vms = d.vms(work)
	if vms[name].State != api.StateRunning || vms["second"].State != api.StateSuspended || vms["third"].State != api.StateRunning {
		t.Errorf("after the wake: %s %s, second %s, third %s", name, vms[name].State, vms["second"].State, vms["third"].State)
	}
	d.mustCLI(work, "destroy", "second")
	d.mustCLI(work, "destroy", "third")
	return d
}

// vmRSS is the resident memory /proc says process pid holds.
func vmRSS(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return strings.Join(strings.Fields(strings.TrimPrefix(line, "VmRSS:")), " ")
		}
	}
	return "?"
}
