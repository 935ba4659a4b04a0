package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/firecracker"
)

// standinRequest is one line of the stand-in's request record.
type standinRequest struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
	Fault  string          `json:"fault"`
}

func readRequests(t *testing.T, path string) []standinRequest {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []standinRequest
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r standinRequest
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// checkContract: every request the driver sent was accepted by the stand-in's
// strict, spec-driven checks, and each boot configured the VM in a legal order.
func checkContract(t *testing.T, dataDir string) {
	t.Helper()
	reqs := readRequests(t, filepath.Join(dataDir, "firecracker-requests.jsonl"))
	if len(reqs) == 0 {
		t.Fatal("the stand-in recorded no requests")
	}
	// The shared base is the read-only root device; the VM's own drives follow.
	want := []string{"PUT /boot-source", "PUT /drives/base", "PUT /drives/data", "PUT /drives/swap", "PUT /drives/config",
		"PUT /machine-config", "PUT /network-interfaces/eth0", "PUT /actions"}
	boots := 0
	for i, r := range reqs {
		if r.Status >= 300 {
			t.Errorf("request %d %s %s refused: %d %s (body %s)", i, r.Method, r.Path, r.Status, r.Fault, r.Body)
		}
		if r.Method+" "+r.Path == want[0] {
			boots++
			for k, w := range want {
				if i+k >= len(reqs) || reqs[i+k].Method+" "+reqs[i+k].Path != w {
					t.Errorf("boot %d: request %d is not %s", boots, i+k, w)
				}
			}
			if i+len(want) > len(reqs) {
				continue
			}
			if b := string(reqs[i+1].Body); !strings.Contains(b, `"is_root_device":true`) || !strings.Contains(b, `"is_read_only":true`) {
				t.Errorf("boot %d: the base drive is %s, want the read-only root device", boots, b)
			}
			if b := string(reqs[i+2].Body); !strings.Contains(b, `"is_read_only":false`) {
				t.Errorf("boot %d: the vm's disk is %s, want it writable", boots, b)
			}
			if last := reqs[i+len(want)-1]; !strings.Contains(string(last.Body), "InstanceStart") {
				t.Errorf("boot %d ends with %s, want InstanceStart", boots, last.Body)
			}
		}
	}
	if boots == 0 {
		t.Error("no boot configuration recorded")
	}
}

// TestFirecracker_StartErrors: the stand-in refusing a call (a bad kernel path, a
// missing tap) fails Start with a message naming the call and the cause, and
// leaves no process, socket or pid file.
func TestFirecracker_StartErrors(t *testing.T) {
	d, err := firecracker.New(firecracker.Options{Binary: filepath.Join(standinDir, "firecracker")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*vmm.Spec)
		want   []string
	}{
		{"kernel missing", func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux.bin" }, []string{"PUT /boot-source", "/nonexistent/vmlinux.bin"}},
		{"tap missing", func(s *vmm.Spec) { s.TapDevice = "tap_nothere" }, []string{"PUT /network-interfaces/eth0", "tap_nothere"}},
		{"disk missing", func(s *vmm.Spec) { s.Drives[1].Path = "/nonexistent/data.img" }, []string{"PUT /drives/data", "/nonexistent/data.img"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := newVM(t, fmt.Sprintf("fcfail%d", i), "fail", net.IPv4(172, 16, 0, byte(110+i)))
			tt.mutate(&vm.spec)
			inst, err := d.Start(context.Background(), vm.spec)
			if err == nil {
				inst.Kill()
				t.Fatal("Start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			time.Sleep(200 * time.Millisecond)
			if out, _ := exec.Command("pgrep", "-f", vm.spec.Dir).Output(); len(out) > 0 {
				t.Errorf("process left after a failed start: %s", out)
			}
			for _, f := range []string{firecracker.SocketFile, firecracker.PIDFile} {
				if _, err := os.Stat(filepath.Join(vm.spec.Dir, f)); err == nil {
					t.Errorf("%s left behind", f)
				}
			}
		})
	}
}

// TestFirecracker_GuestPoweroffKeepsProcess: on x86 a guest power-off leaves the
// Firecracker process running (no ACPI); only a reboot (Ctrl-Alt-Del) ends it.
func TestFirecracker_GuestPoweroffKeepsProcess(t *testing.T) {
	d, err := firecracker.New(firecracker.Options{Binary: filepath.Join(standinDir, "firecracker")})
	if err != nil {
		t.Fatal(err)
	}
	vm := newVM(t, "fcpoweroff", "fc-vm", net.IPv4(172, 16, 0, 120))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := d.Start(ctx, vm.spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Wait(context.Background()) })
	if err := vm.client.WaitReady(ctx); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, readFile(filepath.Join(vm.spec.Dir, firecracker.ConsoleLog)))
	}
	if h := vm.run(t, "hostname"); h != "fc-vm" {
		t.Errorf("hostname = %q", h)
	}
	// The power-off system call itself (there is no poweroff binary without an init
	// system); in the background, so the SSH session can end first.
	vm.client.Run(ctx, `nohup python3 -c 'import ctypes,time,os; time.sleep(0.5); os.sync(); ctypes.CDLL(None).reboot(0x4321fedc)' >/dev/null 2>&1 &`)
	time.Sleep(5 * time.Second)
	vm.client.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if _, err := vm.client.Run(sctx, "true"); err == nil {
		t.Fatal("the guest still answers SSH: it did not power off")
	}
	if !inst.Running() {
		t.Fatal("the firecracker process ended on a guest power-off")
	}
	if syscall.Kill(inst.PID(), 0) != nil {
		t.Fatal("pid gone")
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
