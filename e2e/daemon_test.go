package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// TestDaemon_Lifecycle drives the real daemon with the real CLI: create, ls,
// SSH, stop, start, a daemon restart under a running VM, destroy, and checks
// that nothing of the VM is left.
func TestDaemon_Lifecycle(t *testing.T) {
	for _, hv := range hypervisors {
		t.Run(hv, func(t *testing.T) { testLifecycle(t, hv) })
	}
}

func testLifecycle(t *testing.T, hv string) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, hv, dataDir)
	if !strings.Contains(d.log(), "Admin token written to "+filepath.Join(dataDir, ".token")) {
		t.Errorf("first run does not say where the token is:\n%s", d.log())
	}
	if fi, err := os.Stat(filepath.Join(dataDir, ".token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v %v", fi.Mode().Perm(), err)
	}
	work := t.TempDir()

	out := d.mustCLI(work, "create", "--name", "web1")
	for _, want := range []string{"Creating VM...", "disk", "network", "boot", "ssh", "VM created: web1", "IP:  172.20.0.50"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(work, ".fcm")); strings.TrimSpace(string(b)) != "web1" {
		t.Errorf(".fcm = %q, want web1", b)
	}
	if out := d.mustCLI(work, "ls"); !strings.Contains(out, "web1") || !strings.Contains(out, "running") || !strings.Contains(out, "172.20.0.50") {
		t.Errorf("ls:\n%s", out)
	}
	vm := d.vms(work)["web1"]
	if vm.State != "running" || vm.PID == 0 || vm.CPUs != 1 || vm.MemoryMiB != 1024 || vm.DiskBytes != 2<<30 || vm.Port != 3000 {
		t.Errorf("vm = %+v", vm)
	}

	sshRun := func(cmd string) string {
		t.Helper()
		key, err := guest.LoadOrCreateKey(filepath.Join(dataDir, "id_ed25519"))
		if err != nil {
			t.Fatal(err)
		}
		hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.HostKey))
		if err != nil {
			t.Fatal(err)
		}
		c := &guest.Client{Addr: net.JoinHostPort(vm.IP, "22"), Signer: key, HostKey: hk}
		defer c.Close()
		ctx, cancel := withTimeout(time.Minute)
		defer cancel()
		o, err := c.Run(ctx, cmd)
		if err != nil {
			t.Fatalf("ssh %s: %v", cmd, err)
		}
		return strings.TrimSpace(string(o))
	}
	if h := sshRun("hostname"); h != "web1" {
		t.Errorf("hostname over ssh = %q", h)
	}
	// Swap is a drive of its own (512 MiB = 524284 KiB less the header page),
	// not a file on the user's disk.
	if s := sshRun("cat /proc/swaps"); !strings.Contains(s, "/dev/vd") || !strings.Contains(s, "partition\t524284") {
		t.Errorf("no 512 MiB swap drive: %q", s)
	}

	// stop (the VM comes from ./.fcm) and start again.
	if out := d.mustCLI(work, "stop"); !strings.Contains(out, "web1 is stopped") {
		t.Errorf("stop: %s", out)
	}
	if v := d.vms(work)["web1"]; v.State != "stopped" || v.PID != 0 {
		t.Errorf("after stop: %+v", v)
	}
	if tapExists("tap_" + vm.ID) {
		t.Error("tap still there after stop")
	}
	if h := hypervisorsOf(dataDir); h != "" {
		t.Errorf("hypervisor still running after stop: %s", h)
	}
	if out := d.mustCLI(work, "start"); !strings.Contains(out, "web1 is running") {
		t.Errorf("start: %s", out)
	}
	vm = d.vms(work)["web1"]
	if vm.State != "running" {
		t.Fatalf("after start: %+v", vm)
	}
	sshRun("echo ok")

	// A daemon restart (Ctrl-C, then start) leaves the VM running, same process.
	d.stop(syscall.SIGINT)
	if err := syscall.Kill(vm.PID, 0); err != nil {
		t.Fatalf("the VM died with the daemon: %v", err)
	}
	d = startDaemonHV(t, hv, dataDir)
	if v := d.vms(work)["web1"]; v.State != "running" || v.PID != vm.PID {
		t.Errorf("after daemon restart: state %s pid %d, want running pid %d", v.State, v.PID, vm.PID)
	}
	sshRun("echo still here")

	if out := d.mustCLI(work, "destroy", "--yes"); !strings.Contains(out, "Destroyed web1") {
		t.Errorf("destroy: %s", out)
	}
	if _, err := os.Stat(filepath.Join(work, ".fcm")); !os.IsNotExist(err) {
		t.Error(".fcm still names the destroyed VM")
	}
	if out := d.mustCLI(work, "ls"); !strings.Contains(out, "No VMs") {
		t.Errorf("ls after destroy:\n%s", out)
	}
	if tapExists("tap_" + vm.ID) {
		t.Error("tap left after destroy")
	}
	if strings.Contains(nftElements(t), "172.20.0.50") {
		t.Errorf("nft element left after destroy:\n%s", nftElements(t))
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "vms")); len(entries) != 0 {
		t.Errorf("vm dirs left: %v", entries)
	}
	if h := hypervisorsOf(dataDir); h != "" {
		t.Errorf("hypervisor left: %s", h)
	}
	if hv == "firecracker" {
		checkContract(t, dataDir)
	}
	d.stop(syscall.SIGTERM)
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.View(func(tx *store.Tx) error {
		if leases, _ := tx.Leases(); len(leases) != 0 {
			t.Errorf("leases left: %v", leases)
		}
		if ops, _ := tx.Ops(); len(ops) != 0 {
			t.Errorf("operations left: %v", ops)
		}
		return nil
	})
}

// TestDaemon_BadInput checks what a user sees for mistakes: one line, non-zero exit.
func TestDaemon_BadInput(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemon(t, dataDir)
	work := t.TempDir()
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown vm", nil, []string{"stop", "nosuch"}, `fcm: no vm named "nosuch"`},
		{"no vm and no .fcm", nil, []string{"destroy"}, "no vm named and no .fcm file in this directory"},
		{"bad name", nil, []string{"create", "--name", "../x"}, `invalid vm name "../x"`},
		{"name with a space", nil, []string{"create", "--name", "a b"}, `invalid vm name "a b"`},
		{"long name", nil, []string{"create", "--name", strings.Repeat("a", 300)}, "300 characters"},
		{"unicode name", nil, []string{"create", "--name", "café"}, `invalid vm name "café"`},
		{"bad size", nil, []string{"create", "--disk", "lots"}, `bad size "lots"`},
		{"too many cpus", nil, []string{"create", "--cpus", "99"}, "cpus 99 out of range"},
		{"no token", []string{"FCM_TOKEN="}, []string{"ls"}, "no API token"},
		{"wrong token", []string{"FCM_TOKEN=fcm_wrong"}, []string{"ls"}, "invalid token"},
		{"daemon down", []string{"FCM_HOST=http://127.0.0.1:1"}, []string{"ls"}, "cannot reach the fcm daemon at http://127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + d.token()}, tt.env...)
			out, code := runFCM(t, work, env, tt.args...)
			if code == 0 {
				t.Fatalf("exit 0, want failure; output %q", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output %q lacks %q", out, tt.want)
			}
			if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
				t.Errorf("error is %d lines: %q", n+1, out)
			}
		})
	}
	if out := d.mustCLI(work, "ls"); !strings.Contains(out, "No VMs") {
		t.Errorf("bad requests left something:\n%s", out)
	}
}

// TestDaemon_Refusals: a second daemon on the same data dir, a missing image,
// and a user who is not root are refused with a clear message.
func TestDaemon_Refusals(t *testing.T) {
	dataDir := shortTempDir(t)
	d := startDaemon(t, dataDir)
	_ = d
	out, code := runFCM(t, t.TempDir(), nil, "daemon", "--data-dir", dataDir, "--listen", "127.0.0.1:17778",
		"--kernel", filepath.Join(imageDir, "vmlinux.bin"), "--initrd", filepath.Join(imageDir, "initrd.img"),
		"--rootfs", filepath.Join(imageDir, "base-rootfs.img"), "--bridge", daemonBridge, "--subnet", daemonSubnet,
		"--caddy-admin", "off") // no edge: the namespace may have no address to name a default domain after
	if code == 0 || !strings.Contains(out, "another fcm daemon is using "+dataDir) {
		t.Errorf("second daemon: exit %d, %q", code, out)
	}
	empty := t.TempDir()
	out, code = runFCM(t, t.TempDir(), nil, "daemon", "--data-dir", empty, "--listen", "127.0.0.1:17779")
	if code == 0 || !strings.Contains(out, "fcm image build") || !strings.Contains(out, filepath.Join(empty, "vmlinux.bin")) {
		t.Errorf("missing image: exit %d, %q", code, out)
	}
	long := filepath.Join(empty, strings.Repeat("x", 80))
	out, code = runFCM(t, t.TempDir(), nil, "daemon", "--data-dir", long)
	if code == 0 || !strings.Contains(out, "is too long") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("long data dir: exit %d, %q", code, out)
	}
	if _, err := os.Stat(long); !os.IsNotExist(err) {
		t.Error("the refused data dir was created")
	}
	out, code = fcm(t, 65534, "daemon", "--data-dir", empty)
	if code == 0 || !strings.Contains(out, "needs root") {
		t.Errorf("not root: exit %d, %q", code, out)
	}
}
