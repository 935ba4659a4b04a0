package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
)

// simulateHostCrash does to fcm what a power cut and a reboot do: the daemon
// and every hypervisor of its data dir die at once (kill -9), and the bridge,
// the taps and fcm's nftables tables are gone (they live in the kernel).
func simulateHostCrash(t *testing.T, d *daemonProc) {
	t.Helper()
	d.stop(syscall.SIGKILL)
	killHypervisors(t, d.dataDir)
	exec.Command("ip", "link", "del", daemonBridge).Run()
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if strings.HasPrefix(l.Name(), "tap_") {
			exec.Command("ip", "link", "del", l.Name()).Run()
		}
	}
	for _, tbl := range [][]string{{"inet", "fcm"}, {"bridge", "fcm-l2"}} {
		exec.Command("nft", "delete", "table", tbl[0], tbl[1]).Run()
	}
	if out, _ := exec.Command("nft", "list", "tables").CombinedOutput(); strings.Contains(string(out), "fcm") {
		t.Fatalf("fcm's nftables tables survived the simulated reboot:\n%s", out)
	}
	// The kernel's boot id changes with a reboot; the daemon compares it with
	// the one it saved.
	if err := os.WriteFile(filepath.Join(d.dataDir, "boot_id"), []byte("00000000-0000-0000-0000-000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHeal_HostReboot: after a simulated host crash and reboot (the daemon
// and every hypervisor killed with -9, the bridge, taps and nftables tables
// gone, Caddy and then the daemon started again as systemd would), a VM with a deployed app
// answers at its URL through the real Caddy without any fcm command, a VM
// that was stopped stays stopped, the console sessions are gone with the
// guest's old boot, and fcm console works.
func TestHeal_HostReboot(t *testing.T) {
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	flags := edgeFlags(env)
	d := startDaemonHV(t, "qemu", dataDir, flags...)
	waitCurl(t, env, "https://fcm."+edgeDomain+"/health", "200")
	work := t.TempDir()
	out, err := personShell(t, env, d.token(), work, `
fcm create --name reborn
git init -q
echo "web: python3 -m http.server 3000" > Procfile
echo "<h1>Still here</h1>" > index.html
git add . && git commit -qm init
git push -q fcm main
`)
	if err != nil {
		t.Fatalf("deploy: %v\n%s\ndaemon log:\n%s", err, out, tail(d.log(), 3000))
	}
	url := "https://reborn." + edgeDomain + "/"
	waitCurl(t, env, url, "200")
	d.mustCLI(work, "create", "--name", "sleeper", "--no-git")
	d.mustCLI(work, "stop", "sleeper")

	// A console session, detached: it lives in the guest's tmux.
	tenv, h, bin := d.terminal(t)
	h.run("a", work, tenv, bin+" console reborn")
	h.waitFor("a", "root@reborn")
	h.keys("a", "C-]")
	h.waitFor("a", "Detached from")
	if out := d.mustCLI(work, "console", "ls", "reborn"); !strings.Contains(out, "reborn") {
		t.Fatalf("console ls before the reboot:\n%s", out)
	}
	before := d.vms(work)["reborn"]

	simulateHostCrash(t, d)
	crashed := time.Now()
	// The boot order of the systemd units: the network, Caddy (with its
	// storage but an empty config), then fcm.
	env.StopCaddy()
	if err := env.StartCaddy(); err != nil {
		t.Fatal(err)
	}
	d = startDaemonHV(t, "qemu", dataDir, flags...)

	body, took := waitCurl(t, env, url, "200")
	if !strings.Contains(body, "Still here") {
		diag, _ := d.inVMErr(work, "reborn", "ls -la /srv/app /srv/app/builds; cat /srv/app/current.json; tail -20 /srv/app/log/app.log")
		t.Errorf("%s after the reboot served %q\nin the vm:\n%s", url, body, diag)
	}
	t.Logf("the app answered through Caddy %s after the daemon started (%s after the crash)", took.Round(time.Millisecond), time.Since(crashed).Round(time.Millisecond))
	v := d.vms(work)["reborn"]
	if v.State != api.StateRunning || v.PID == before.PID || v.Desired != api.DesiredRunning {
		t.Errorf("reborn after the reboot: %s, pid %d (was %d), desired %s", v.State, v.PID, before.PID, v.Desired)
	}
	if !hasEvent(v, "host-restart", "host restart") || !hasEvent(v, "restarted", "after host restart") {
		t.Errorf("reborn's events do not tell the host restart and the vm's: %+v", v.Events)
	}
	if s := d.vms(work)["sleeper"]; s.State != api.StateStopped || s.Desired != api.DesiredStopped {
		t.Errorf("a stopped vm after the reboot: %s, desired %s; want stopped", s.State, s.Desired)
	}
	log := d.log()
	for _, want := range []string{"restarting vm", "vm restarted"} {
		if !strings.Contains(log, want) {
			t.Errorf("the daemon log lacks %q:\n%s", want, tail(log, 3000))
		}
	}
	if n := len(procsMentioning(filepath.Join(dataDir, "vms") + "/")); n != 1 {
		t.Errorf("%d hypervisors run after the reboot, want 1 (reborn's)", n)
	}

	// The guest booted afresh: its old sessions are gone, a new one works.
	if out := d.mustCLI(work, "console", "ls", "reborn"); !strings.Contains(out, "No console sessions.") {
		t.Errorf("console sessions survived the guest's reboot:\n%s", out)
	}
	h.run("b", work, tenv, bin+" console reborn")
	h.waitFor("b", "root@reborn")
	h.keys("b", "echo back-$((6*7))", "Enter")
	h.waitFor("b", "back-42")
	h.keys("b", "exit", "Enter")

	d.mustCLI(work, "destroy", "reborn")
	d.mustCLI(work, "destroy", "sleeper")
}
