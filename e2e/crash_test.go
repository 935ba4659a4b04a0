package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// TestDaemon_KillDuringCreate kills the daemon with SIGKILL at two points of a
// create; after a restart the VM is either running or entirely gone.
func TestDaemon_KillDuringCreate(t *testing.T) {
	for _, hv := range hypervisors {
		t.Run(hv, func(t *testing.T) { testKillDuringCreate(t, hv) })
	}
}

func testKillDuringCreate(t *testing.T, hv string) {
	points := []struct {
		name  string
		ready func(dataDir string) bool
	}{
		{"while the disk is made", func(dataDir string) bool {
			m, _ := filepath.Glob(filepath.Join(dataDir, "vms", "*"))
			return len(m) > 0
		}},
		{"while the guest boots", func(dataDir string) bool { return hypervisorsOf(dataDir) != "" }},
	}
	for _, p := range points {
		t.Run(p.name, func(t *testing.T) {
			dataDir := shortTempDir(t)
			cleanupVMs(t, dataDir)
			d := startDaemonHV(t, hv, dataDir)
			work := t.TempDir()
			create := exec.Command(os.Getenv("FCM_BIN"), "create", "--name", "crash1")
			create.Dir = work
			create.Env = append(os.Environ(), "FCM_HOST=http://"+daemonListen, "FCM_TOKEN="+d.token())
			if err := create.Start(); err != nil {
				t.Fatal(err)
			}
			defer create.Wait()
			deadline := time.Now().Add(30 * time.Second)
			for !p.ready(dataDir) {
				if time.Now().After(deadline) {
					t.Fatalf("create never reached the point:\n%s", d.log())
				}
				time.Sleep(2 * time.Millisecond)
			}
			d.stop(syscall.SIGKILL)
			create.Wait()

			d = startDaemonHV(t, hv, dataDir)
			vms := d.vms(work)
			if v, ok := vms["crash1"]; ok {
				if v.State != "running" {
					t.Fatalf("after restart crash1 is %s, want running or gone", v.State)
				}
				t.Logf("crash1 survived, running")
				d.mustCLI(work, "destroy", "crash1")
				return
			}
			t.Logf("crash1 rolled back")
			if h := hypervisorsOf(dataDir); h != "" {
				t.Errorf("hypervisor left: %s", h)
			}
			if entries, _ := os.ReadDir(filepath.Join(dataDir, "vms")); len(entries) != 0 {
				t.Errorf("vm dirs left: %v", entries)
			}
			out, _ := exec.Command("ip", "-o", "link").Output()
			if strings.Contains(string(out), "tap_") {
				t.Errorf("taps left:\n%s", out)
			}
			if strings.Contains(nftElements(t), "172.20.0.") {
				t.Errorf("nft elements left:\n%s", nftElements(t))
			}
			if !strings.Contains(d.log(), "resuming interrupted operation") {
				t.Errorf("the restarted daemon did not report the interrupted create:\n%s", d.log())
			}
			// The name and address are free again.
			if out := d.mustCLI(work, "create", "--name", "crash1"); !strings.Contains(out, "172.20.0.50") {
				t.Errorf("re-create did not get the freed address:\n%s", out)
			}
			d.mustCLI(work, "destroy", "crash1")
		})
	}
}

// TestDaemon_RemovesLeaks: what a crash can leave outside the store (a tap, an
// nft element, a VM directory, a lease) is removed when the daemon starts.
func TestDaemon_RemovesLeaks(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemon(t, dataDir) // makes the bridge, table and store
	d.stop(syscall.SIGTERM)

	// fcm's leaked tap is on its bridge; two taps of other tools are not, one
	// of them of fcm's form: those stay (review L9).
	sh(t, "ip", "tuntap", "add", "dev", "tap_leak0001", "mode", "tap")
	sh(t, "ip", "link", "set", "tap_leak0001", "master", daemonBridge)
	sh(t, "ip", "tuntap", "add", "dev", "tap_foreign1", "mode", "tap")
	sh(t, "ip", "tuntap", "add", "dev", "tap_theirs", "mode", "tap")
	sh(t, "nft", "add", "element", "inet", "fcm", "vms", "{ 172.20.0.200 }")
	leakedDir := filepath.Join(dataDir, "vms", "abcd1234")
	if err := os.MkdirAll(leakedDir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := store.PoolFor(netip.MustParsePrefix(daemonSubnet))
	st.Update(func(tx *store.Tx) error { _, err := tx.Lease("abcd1234", pool); return err })
	st.Close()

	d = startDaemon(t, dataDir)
	if tapExists("tap_leak0001") {
		t.Error("leaked tap not removed")
	}
	for _, foreign := range []string{"tap_foreign1", "tap_theirs"} {
		if !tapExists(foreign) {
			t.Errorf("another tool's tap %s was removed", foreign)
		}
	}
	if strings.Contains(nftElements(t), "172.20.0.200") {
		t.Error("leaked nft element not removed")
	}
	if _, err := os.Stat(leakedDir); !os.IsNotExist(err) {
		t.Error("leaked vm directory not removed")
	}
	for _, what := range []string{"leaked tap", "leaked nft element", "leaked lease", "leaked vm directory"} {
		if !strings.Contains(d.log(), what) {
			t.Errorf("the daemon log does not report a %s:\n%s", what, d.log())
		}
	}
	// The leaked lease's address is the first one handed out again.
	if out := d.mustCLI(t.TempDir(), "create", "--name", "after-leak"); !strings.Contains(out, "IP:  172.20.0.50") {
		t.Errorf("create after the leak cleanup:\n%s", out)
	}
	d.mustCLI(t.TempDir(), "destroy", "after-leak")
}

// TestDaemon_UnanswerableHypervisor: a VM whose QEMU is alive but does not
// answer (SIGSTOPped, so QMP accepts and never greets) does not keep the
// restarted daemon from starting and serving the other VMs; it is marked error
// with the reason, never stopped; its tap stays while it runs; start refuses
// to boot a second QEMU on its disk; destroy kills it before removing its disk.
func TestDaemon_UnanswerableHypervisor(t *testing.T) {
	d, work := daemonWithVM(t, "hung")
	d.mustCLI(work, "create", "--name", "fine")
	hung := d.vms(work)["hung"]
	pid := hung.PID
	if pid == 0 {
		t.Fatalf("hung has no pid: %+v", hung)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	d.stop(syscall.SIGTERM)

	d = startDaemon(t, d.dataDir)
	vms := d.vms(work)
	if v := vms["hung"]; v.State != "error" || !strings.Contains(v.Reason, "does not answer") {
		t.Errorf("hung after the restart: %s (%s), want error saying its hypervisor does not answer", v.State, v.Reason)
	}
	if v := vms["fine"]; v.State != "running" {
		t.Errorf("fine after the restart: %s, want running", v.State)
	}
	d.mustCLI(work, "console", "ls", "fine") // the daemon serves the other VMs (over SSH)
	if !tapExists("tap_" + hung.ID) {
		t.Error("the tap of a running hypervisor was removed")
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the hung hypervisor was killed by the restart")
	}

	out, code := d.cli(work, "start", "hung")
	if code == 0 || !strings.Contains(out, "does not answer") {
		t.Errorf("start of hung: exit %d, want a refusal saying its hypervisor does not answer:\n%s", code, out)
	}
	if pids := procsMentioning(filepath.Join(d.dataDir, "vms", hung.ID) + "/"); len(pids) != 1 {
		t.Errorf("hypervisors on hung's disk after the refused start: %v, want only %d", pids, pid)
	}

	d.mustCLI(work, "destroy", "hung")
	for i := 0; ; i++ { // killed and waited for; its zombie may take a moment to be reaped
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if i == 20 {
			t.Errorf("the hung hypervisor survived its destroy: %s", st)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if tapExists("tap_" + hung.ID) {
		t.Error("hung's tap survived its destroy")
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "vms", hung.ID)); !os.IsNotExist(err) {
		t.Errorf("hung's directory survived its destroy: %v", err)
	}
	d.mustCLI(work, "destroy", "fine")
}

// procsMentioning lists the live processes whose whole command line contains s
// (pgrep -f reads only the start of a long one, such as QEMU's).
func procsMentioning(s string) []int {
	var pids []int
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		cmdline, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(stat), ") Z ") {
			pids = append(pids, pid)
		}
	}
	return pids
}
