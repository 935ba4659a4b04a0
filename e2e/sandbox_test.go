package e2e

import (
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
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/crypto/ssh"
)

// TestSandbox: the daemon's hypervisor runs as the VM's own unprivileged user,
// in the VM's cgroup with its memory limit and oom_score_adj 500 (QEMU also
// under its seccomp sandbox); a guest flooding its serial console leaves a
// console.log under the cap; destroy removes the cgroup. One VM per driver.
func TestSandbox(t *testing.T) {
	for _, hv := range hypervisors {
		t.Run(hv, func(t *testing.T) { testSandbox(t, hv) })
	}
}

// procStatus returns the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// children lists pid's child processes (forked by any of its threads).
func children(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, file := range files {
		b, _ := os.ReadFile(file)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func rssMiB(t *testing.T, pid int) int {
	kb, _ := strconv.Atoi(strings.TrimSuffix(procStatus(t, pid)["VmRSS"], " kB"))
	return kb >> 10
}

func testSandbox(t *testing.T, hv string) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, hv, dataDir)
	cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir)) // the daemon's, for the checks below
	work := t.TempDir()
	d.mustCLI(work, "create", "--name", "box1")
	v := d.vms(work)["box1"]
	if v.State != api.StateRunning || v.PID == 0 {
		t.Fatalf("vm = %+v", v)
	}

	// The hypervisor (and for the stand-in, the QEMU it runs) is not root.
	wantUID := vmm.UIDBase + 50 // 172.20.0.50: host 50 of the subnet
	procs := []int{v.PID}
	if hv == "firecracker" {
		kids := children(v.PID)
		if len(kids) != 1 {
			t.Fatalf("the stand-in (pid %d) has children %v; want its one QEMU", v.PID, kids)
		}
		procs = append(procs, kids[0])
	}
	for _, pid := range procs {
		st := procStatus(t, pid)
		want := fmt.Sprintf("%d %d %d %d", wantUID, wantUID, wantUID, wantUID)
		if st["Uid"] != want || st["Gid"] != want {
			t.Errorf("%s (pid %d): Uid %q Gid %q; want %q for both", st["Name"], pid, st["Uid"], st["Gid"], want)
		}
		if g := st["Groups"]; strings.Contains(" "+g+" ", " 0 ") {
			t.Errorf("pid %d keeps root's group: Groups %q", pid, g)
		}
		if id := cgroup.Of(pid); id != v.ID {
			t.Errorf("pid %d is in VM cgroup %q; want %q", pid, id, v.ID)
		}
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid)); strings.TrimSpace(string(b)) != "500" {
			t.Errorf("pid %d: oom_score_adj %q; want 500", pid, strings.TrimSpace(string(b)))
		}
		t.Logf("pid %d %s: Uid %s, cgroup %s, Seccomp %s, RSS %d MiB", pid, st["Name"], st["Uid"], v.ID, st["Seccomp"], rssMiB(t, pid))
	}
	if hv == "qemu" {
		if s := procStatus(t, v.PID)["Seccomp"]; s != "2" {
			t.Errorf("qemu Seccomp = %q; want 2 (filter: -sandbox on)", s)
		}
	}
	want := cgroup.ForVM(v.MemoryMiB, v.CPUs).MemoryBytes
	if got, err := cgroup.MemoryLimit(v.ID); err != nil || got != want {
		t.Errorf("memory limit of the VM's cgroup = %d, %v; want %d (%d MiB guest + overhead)", got, err, want, v.MemoryMiB)
	}
	vmDir := filepath.Join(dataDir, "vms", v.ID)
	// The VM's own disks are its user's, 0600; the shared base stays root's.
	for _, f := range []string{"data.img", "swap.img", "config.img"} {
		st, err := os.Stat(filepath.Join(vmDir, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if uid := st.Sys().(*syscall.Stat_t).Uid; st.Mode().Perm() != 0o600 || int(uid) == 0 {
			t.Errorf("%s: mode %v owner %d; want 0600 and the VM's user", f, st.Mode(), uid)
		}
	}
	bases, _ := filepath.Glob(filepath.Join(dataDir, "images", "*", image.RootfsFile))
	for _, b := range bases {
		st, err := os.Stat(b)
		if err != nil {
			t.Fatal(err)
		}
		if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 0 || st.Mode().Perm()&0o022 != 0 {
			t.Errorf("base %s: mode %v owner %d; want root's, written by no one else", b, st.Mode(), uid)
		}
	}
	if len(bases) != 1 {
		t.Errorf("%d bases in the data dir, want 1", len(bases))
	}

	// A guest writing 6 MB (six times the cap) to its serial console.
	key, err := guest.LoadOrCreateKey(filepath.Join(dataDir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v.HostKey))
	if err != nil {
		t.Fatal(err)
	}
	c := &guest.Client{Addr: net.JoinHostPort(v.IP, "22"), Signer: key, HostKey: hk}
	defer c.Close()
	logPath := filepath.Join(vmDir, "console.log")
	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if st, err := os.Stat(logPath); err == nil && st.Size() > peak {
				peak = st.Size()
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	ctx, cancel := withTimeout(8 * time.Minute)
	line := strings.Repeat("0123456789", 9) + "fcm-flood" // 100 bytes a line with the newline
	out, err := c.Run(ctx, fmt.Sprintf("yes %s | head -c 6000000 > /dev/ttyS0 && echo FCM-FLOOD-END > /dev/ttyS0 && echo done", line))
	cancel()
	took := time.Since(start)
	if err != nil || strings.TrimSpace(string(out)) != "done" {
		t.Fatalf("flooding the serial console: %v: %s", err, out)
	}
	time.Sleep(vm.ConsoleTrimEvery + time.Second) // one more trim
	close(stop)
	<-sampled
	cur, _ := os.ReadFile(logPath)
	prev, _ := os.ReadFile(logPath + ".1")
	t.Logf("6 MB to ttyS0 in %s; console.log peaked at %d KiB, now %d KiB + console.log.1 %d KiB",
		took.Round(time.Millisecond), peak>>10, len(cur)>>10, len(prev)>>10)
	if len(cur) > vm.ConsoleLogCap || len(prev) > 2*vm.ConsoleLogCap {
		t.Errorf("console.log is %d bytes, console.log.1 %d; want both under about the %d byte cap", len(cur), len(prev), vm.ConsoleLogCap)
	}
	if peak > 3<<20 { // the cap and what ~2 s of serial output adds before a trim
		t.Errorf("console.log reached %d bytes while the guest wrote 6 MB; want it trimmed near %d", peak, vm.ConsoleLogCap)
	}
	if !strings.Contains(string(cur), "FCM-FLOOD-END") && !strings.Contains(string(prev), "FCM-FLOOD-END") {
		t.Errorf("the guest's last console line is in neither console.log nor console.log.1")
	}

	if hv == "qemu" {
		// The memory overhead: QEMU's RSS while the guest holds most of its RAM.
		ctx, cancel := withTimeout(3 * time.Minute)
		_, err := c.Run(ctx, "nohup python3 -c 'import time; b=bytearray(b\"x\")*(800<<20); time.sleep(20)' >/dev/null 2>&1 &")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		maxRSS := 0
		for i := 0; i < 60; i++ {
			maxRSS = max(maxRSS, rssMiB(t, v.PID))
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("qemu RSS peaked at %d MiB with a %d MiB guest holding 800 MiB (limit %d MiB)", maxRSS, v.MemoryMiB, want>>20)
		if got := d.vms(work)["box1"]; got.State != api.StateRunning {
			t.Errorf("after the guest used its memory the vm is %s (%s); want running under its limit", got.State, got.Reason)
		}
	}

	d.mustCLI(work, "destroy", "box1")
	dirs, _ := cgroup.Dirs(v.ID)
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("after destroy, cgroup %s: %v; want it gone", dir, err)
		}
	}
	if ids, _ := cgroup.List(); slices.Contains(ids, v.ID) {
		t.Errorf("after destroy cgroup.List() = %v still has %s", ids, v.ID)
	}
}
