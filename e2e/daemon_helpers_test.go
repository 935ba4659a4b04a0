package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/image"
)

// Daemon tests use their own bridge and subnet, apart from the boot tests'.
const (
	daemonBridge = "fcmd0"
	daemonSubnet = "172.20.0.0/24"
	daemonListen = "127.0.0.1:17777"
)

// daemonProc is a real `fcm daemon` process.
type daemonProc struct {
	t       *testing.T
	dataDir string
	cmd     *exec.Cmd
	logPath string
}

// hypervisors are the drivers the daemon tests run with: QEMU, and Firecracker
// through the spec-checking stand-in (built by TestMain, put on PATH as
// "firecracker" for the daemon only).
var hypervisors = []string{"qemu", "firecracker"}

// startDaemon runs `fcm daemon` with the qemu driver.
func startDaemon(t *testing.T, dataDir string) *daemonProc {
	return startDaemonHV(t, "qemu", dataDir)
}

// startDaemonHV runs `fcm daemon --hypervisor hv` on dataDir with extra flags
// and waits for /health. Without --caddy-admin among them there is no edge.
func startDaemonHV(t *testing.T, hv, dataDir string, extra ...string) *daemonProc {
	t.Helper()
	return startDaemonImage(t, hv, dataDir, imageDir, extra...)
}

// startDaemonImage is startDaemonHV with VMs booting the image in img.
func startDaemonImage(t *testing.T, hv, dataDir, img string, extra ...string) *daemonProc {
	t.Helper()
	return startDaemonLog(t, hv, dataDir, img, dataDir, extra...)
}

// startDaemonLog is startDaemonImage with the daemon's log in logDir (a
// data dir whose filesystem a test fills cannot hold it).
func startDaemonLog(t *testing.T, hv, dataDir, img, logDir string, extra ...string) *daemonProc {
	t.Helper()
	d := &daemonProc{t: t, dataDir: dataDir, logPath: filepath.Join(logDir, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano()))}
	args := []string{"daemon", "--data-dir", dataDir, "--listen", daemonListen, "--hypervisor", hv,
		"--bridge", daemonBridge, "--subnet", daemonSubnet,
		"--kernel", filepath.Join(img, image.KernelFile),
		"--initrd", filepath.Join(img, image.InitrdFile),
		"--rootfs", filepath.Join(img, image.RootfsFile)}
	if !slices.Contains(extra, "--caddy-admin") {
		args = append(args, "--caddy-admin", "off")
	}
	if !slices.Contains(extra, "--suspend") {
		// The daemon's default is on; the tests of what suspend does ask for
		// it, and the others keep guest RAM anonymous, so that no VM they
		// share sleeps under them and their memory and disk figures hold.
		args = append(args, "--suspend", "off")
	}
	if !slices.Contains(extra, "--store") {
		// The daemon's default on this ext4 host is an XFS store in a loop
		// file; the tests of checkpoints ask for it on a filesystem of their
		// own, and the others keep their disks in their data dir.
		args = append(args, "--store", "dir")
	}
	args = append(args, extra...)
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The stand-in runs as the VM's own user, as Firecracker would: its record
	// of requests must be writable by it.
	record := filepath.Join(dataDir, "firecracker-requests.jsonl")
	if f, err := os.OpenFile(record, os.O_CREATE|os.O_WRONLY, 0o666); err == nil {
		f.Chmod(0o666)
		f.Close()
	}
	d.cmd = exec.Command(os.Getenv("FCM_BIN"), args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), "PATH="+standinDir+":"+os.Getenv("PATH"),
		"FCM_STANDIN_RECORD="+record)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { d.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + daemonListen + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("daemon exited at start:\n%s", d.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not healthy after 30s:\n%s", d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { d.stop(syscall.SIGTERM) })
	return d
}

func (d *daemonProc) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// stop signals the daemon and waits for it to exit (a no-op if it has).
func (d *daemonProc) stop(sig syscall.Signal) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(sig)
	for i := 0; i < 100 && d.cmd.ProcessState == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemonProc) token() string {
	b, err := os.ReadFile(filepath.Join(d.dataDir, ".token"))
	if err != nil {
		d.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cli runs the real fcm binary against the daemon from dir, with the token.
func (d *daemonProc) cli(dir string, args ...string) (string, int) {
	d.t.Helper()
	return runFCM(d.t, dir, []string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + d.token()}, args...)
}

func runFCM(t *testing.T, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Getenv("FCM_BIN"), args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "HOME="+t.TempDir()), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// mustCLI runs fcm and fails the test unless it exits 0.
func (d *daemonProc) mustCLI(dir string, args ...string) string {
	d.t.Helper()
	out, code := d.cli(dir, args...)
	if code != 0 {
		d.t.Fatalf("fcm %v: exit %d:\n%s%s\ndaemon log:\n%s", args, code, out, consoleOf(out), d.log())
	}
	return out
}

// vms lists the VMs through `fcm ls --json`.
func (d *daemonProc) vms(dir string) map[string]api.VM {
	d.t.Helper()
	var list []api.VM
	if err := json.Unmarshal([]byte(d.mustCLI(dir, "ls", "--json")), &list); err != nil {
		d.t.Fatal(err)
	}
	out := map[string]api.VM{}
	for _, v := range list {
		out[v.Name] = v
	}
	return out
}

// cleanupVMs kills whatever hypervisors and taps dataDir's VMs left (tests end
// with VMs destroyed; this only matters when one failed half-way).
func cleanupVMs(t *testing.T, dataDir string) {
	t.Cleanup(func() {
		// Not pkill -f: it misses a QEMU whose long command line names the
		// directory late.
		for _, pid := range procsMentioning(filepath.Join(dataDir, "vms") + "/") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		// The daemon's cgroups: what a failed test left, then their parent.
		cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir))
		ids, _ := cgroup.List()
		for _, id := range ids {
			cgroup.Kill(id)
			cgroup.Remove(id)
		}
		cgroup.RemoveParent()
		links, _ := net.Interfaces()
		for _, l := range links {
			if strings.HasPrefix(l.Name, "tap_") {
				exec.Command("ip", "link", "del", l.Name).Run()
			}
		}
	})
}

// hypervisorsOf lists the pids of processes whose command line names dataDir's VMs.
func hypervisorsOf(dataDir string) string {
	return strings.Trim(fmt.Sprint(procsMentioning(filepath.Join(dataDir, "vms")+"/")), "[]")
}

func tapExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func nftElements(t *testing.T) string {
	out, err := exec.Command("nft", "list", "set", "inet", "fcm", "vms").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list set: %v: %s", err, out)
	}
	return string(out)
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// shortTempDir is a temporary data dir with a short path: t.TempDir's names
// carry the test's name, and VM sockets under a data dir must fit a unix socket
// path (the daemon refuses a data dir that is too long).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// waitLog waits until the daemon's log says s.
func (d *daemonProc) waitLog(s string) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(d.log(), s) {
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon log never said %q:\n%s", s, d.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemonWithVM starts a daemon on a data dir of its own and creates VM name
// from a work dir; the VMs are removed after the test.
func daemonWithVM(t *testing.T, name string) (*daemonProc, string) {
	t.Helper()
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemon(t, dataDir)
	work := t.TempDir()
	d.mustCLI(work, "create", "--name", name)
	return d, work
}
