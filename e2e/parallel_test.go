package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// TestDaemon_ParallelCreates: 10 creates at once get 10 distinct names and
// addresses, all running; 10 destroys at once leave nothing; with either
// driver (its processes, sockets and API calls side by side). Twenty at once
// showed nothing ten do not, in twice the time under emulation; the bench
// times 20 parallel creates.
func TestDaemon_ParallelCreates(t *testing.T) {
	for _, hv := range hypervisors {
		t.Run(hv, func(t *testing.T) { testParallelCreates(t, hv) })
	}
}

func testParallelCreates(t *testing.T, hv string) {
	const n = 10
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	// Ten guests booting at once under software emulation share two cores:
	// each boots about ten times slower than alone.
	d := startDaemonHV(t, hv, dataDir, "--boot-timeout", "5m")
	work := t.TempDir()

	created := regexp.MustCompile(`VM created: (\S+)\n\s+IP:\s+(\S+)`)
	var mu sync.Mutex
	names, ips := map[string]bool{}, map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, code := d.cli(t.TempDir(), "create", "--memory", "256")
			m := created.FindStringSubmatch(out)
			mu.Lock()
			defer mu.Unlock()
			if code != 0 || m == nil {
				t.Errorf("create: exit %d:\n%s%s", code, out, consoleOf(out))
				return
			}
			if names[m[1]] || ips[m[2]] {
				t.Errorf("duplicate name %s or address %s", m[1], m[2])
			}
			names[m[1]], ips[m[2]] = true, true
		}()
	}
	wg.Wait()
	vms := d.vms(work)
	running := 0
	for _, v := range vms {
		if v.State == "running" {
			running++
		}
	}
	if len(names) != n || len(ips) != n || running != n {
		t.Fatalf("%d names, %d addresses, %d running; want %d each\n%s", len(names), len(ips), running, n, d.log())
	}

	for name := range names {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if out, code := d.cli(work, "destroy", name); code != 0 {
				t.Errorf("destroy %s: %s", name, out)
			}
		}(name)
	}
	wg.Wait()
	if left := d.vms(work); len(left) != 0 {
		t.Errorf("%d vms left", len(left))
	}
	out, _ := exec.Command("ip", "-o", "link").Output()
	if c := strings.Count(string(out), "tap_"); c != 0 {
		t.Errorf("%d taps left", c)
	}
	if h := hypervisorsOf(dataDir); h != "" {
		t.Errorf("hypervisors left: %s", fmt.Sprint(h))
	}
}

// consoleOf returns the guest console a failed create saved, for the test log.
func consoleOf(out string) string {
	m := regexp.MustCompile(`guest console: (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	b, _ := os.ReadFile(m[1])
	return "guest console:\n" + string(b)
}
