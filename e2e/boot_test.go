package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/images"
	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
	"golang.org/x/sys/unix"
)

var bridgeMu sync.Mutex

// testVM is one VM of a test with everything the host made for it.
type testVM struct {
	spec   vmm.Spec
	ip     net.IP
	client *guest.Client
}

// setupBridge makes the bridge the VMs' taps join, with the gateway address.
func setupBridge(t *testing.T) {
	t.Helper()
	bridgeMu.Lock() // tests that run in parallel make it once
	defer bridgeMu.Unlock()
	if _, err := net.InterfaceByName("fcm0"); err == nil {
		return
	}
	// A MAC of its own, as the daemon gives its bridge: otherwise the bridge
	// takes its lowest port's, and a tap added for one test's VM changes the
	// gateway's MAC under another's running VM, whose packets to the host then
	// go nowhere until its ARP entry goes stale (about 45 s).
	sh(t, "ip", "link", "add", "fcm0", "address", "02:fc:ac:10:00:01", "type", "bridge")
	sh(t, "ip", "addr", "add", "172.16.0.1/24", "dev", "fcm0")
	sh(t, "ip", "link", "set", "fcm0", "up")
}

// newVM makes a VM's disk (cloned from the image, keys written in) and tap.
func newVM(t *testing.T, id, hostname string, ip net.IP) *testVM {
	return newVMFrom(t, imageDir, id, hostname, ip)
}

// newVMFrom is newVM with another image.
func newVMFrom(t *testing.T, imageDir, id, hostname string, ip net.IP) *testVM {
	t.Helper()
	setupBridge(t)
	dir := filepath.Join(t.TempDir(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := guest.LoadOrCreateKey(filepath.Join(t.TempDir(), "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	ident, err := guest.NewIdentity(key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.MakeDisks(context.Background(), dir, &disk.Templates{Dir: templateDir(t)}, 2<<30, 64, ident); err != nil {
		t.Fatal(err)
	}
	// Not tap_<id>, a daemon's: a daemon test's cleanup (cleanupVMs) removes
	// every tap_ link, and these VMs may run beside one (TestDeploy_Runtimes).
	tap := "rtap_" + id
	sh(t, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
	t.Cleanup(func() { exec.Command("ip", "link", "del", tap).Run() })
	sh(t, "ip", "link", "set", tap, "master", "fcm0", "up")

	spec := vmm.Spec{
		ID: id, Dir: dir,
		Kernel:   filepath.Join(imageDir, image.KernelFile),
		Initrd:   filepath.Join(imageDir, image.InitrdFile),
		BootArgs: guest.BootArgs(guest.Boot{Address: ip, Gateway: net.IPv4(172, 16, 0, 1), Mask: net.CIDRMask(24, 32), Hostname: hostname, Overlay: true}),
		Drives:   vm.Drives(dir, &base.Base{Dir: imageDir}, true), TapDevice: tap,
		MAC:   fmt.Sprintf("06:00:ac:10:00:%02x", ip.To4()[3]),
		VCPUs: 1, MemoryMiB: 512,
	}
	client := &guest.Client{Addr: net.JoinHostPort(ip.String(), "22"), Signer: key, HostKey: ident.HostKey}
	t.Cleanup(func() { client.Close() })
	return &testVM{spec: spec, ip: ip, client: client}
}

// boot starts the VM and waits for SSH; the VM is killed when the test ends.
func (v *testVM) boot(t *testing.T, d *qemu.Driver) *qemu.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := d.Start(ctx, v.spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if inst.Running() {
			inst.Kill()
			inst.Wait(context.Background())
		}
	})
	if err := v.client.WaitReady(ctx); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, v.console())
	}
	var stages []string
	for _, line := range strings.Split(v.console(), "\n") {
		if _, st, ok := strings.Cut(line, ": boot "); ok {
			stages = append(stages, st)
		}
	}
	t.Logf("%s boot stages: %s", v.spec.ID, strings.Join(stages, ", "))
	return inst.(*qemu.Instance)
}

func (v *testVM) console() string {
	b, _ := os.ReadFile(filepath.Join(v.spec.Dir, qemu.ConsoleLog))
	return string(b)
}

func (v *testVM) run(t *testing.T, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := v.client.Run(ctx, cmd)
	if err != nil {
		t.Fatalf("in the vm: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestQEMU_BootSSHAndPowerOff(t *testing.T) {
	t.Parallel() // a VM of its own on fcm0, no daemon: beside TestDeploy_Runtimes
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accelerator: %s", d.Accel())
	vm := newVM(t, "e2eboot1", "e2e-vm", net.IPv4(172, 16, 0, 50))

	inst := vm.boot(t, d)
	t.Run("tmux", func(t *testing.T) {
		out := vm.run(t, "tmux new -d -s t && tmux ls")
		if !strings.HasPrefix(out, "t: 1 windows") {
			t.Errorf("tmux ls = %q, want a session t with 1 window", out)
		}
	})
	t.Run("python", func(t *testing.T) {
		if out := vm.run(t, "python3 --version"); !strings.HasPrefix(out, "Python 3.") {
			t.Errorf("python3 --version = %q", out)
		}
	})
	t.Run("hostname and address from the kernel command line", func(t *testing.T) {
		if out := vm.run(t, "hostname"); out != "e2e-vm" {
			t.Errorf("hostname = %q, want e2e-vm", out)
		}
		if out := vm.run(t, "ip -4 -o addr show dev eth0"); !strings.Contains(out, "inet 172.16.0.50/24") {
			t.Errorf("eth0 = %q, want 172.16.0.50/24", out)
		}
		if out := vm.run(t, "ip route show default"); !strings.HasPrefix(out, "default via 172.16.0.1 dev eth0") {
			t.Errorf("default route = %q, want via 172.16.0.1", out)
		}
		if out := vm.run(t, "cat /proc/cmdline"); !strings.Contains(out, "ip=172.16.0.50::172.16.0.1:255.255.255.0:e2e-vm:eth0:off") {
			t.Errorf("cmdline = %q", out)
		}
	})
	t.Run("swap on a drive of its own", func(t *testing.T) {
		// 64 MiB less the header page, in KiB.
		if out := vm.run(t, "cat /proc/swaps"); !strings.Contains(out, "/dev/vd") || !strings.Contains(out, "partition\t65532") {
			t.Errorf("/proc/swaps = %q, want a 64 MiB swap drive", out)
		}
	})
	t.Run("the whole 2 GiB disk is free for the user", func(t *testing.T) {
		out := vm.run(t, "df -B1 --output=avail / | tail -1")
		var avail int64
		fmt.Sscan(out, &avail)
		if avail < 2<<30-16<<20 {
			t.Errorf("/ has %s bytes free, want 2 GiB (less a few MiB of files)", out)
		}
		if out := vm.run(t, "findmnt -no FSTYPE /"); out != "overlay" {
			t.Errorf("/ is %q, want the overlay of the base and the vm's disk", out)
		}
	})
	t.Run("placeholder page on port 3000", func(t *testing.T) {
		body := httpGet(t, "http://172.16.0.50:3000/")
		if !strings.Contains(body, "e2e-vm is running") {
			t.Errorf("page = %q", body)
		}
	})
	t.Run("no zombies under init", func(t *testing.T) {
		vm.run(t, "sh -c 'sleep 0.1 & exit 0'") // orphans a child to init
		time.Sleep(500 * time.Millisecond)
		if out := vm.run(t, "ps -eo stat= | grep -c '^Z' || true"); out != "0" {
			t.Errorf("%s zombie processes", out)
		}
	})
	vm.run(t, "echo kept > /root/marker")

	t.Run("qemu runs in its own session", func(t *testing.T) {
		sid, err := unix.Getsid(inst.PID())
		if err != nil {
			t.Fatal(err)
		}
		if mine, _ := unix.Getsid(0); sid == mine {
			t.Errorf("qemu shares our session %d: a Ctrl-C of the daemon's terminal would reach it", sid)
		}
	})
	t.Run("a new driver re-adopts the running vm", func(t *testing.T) {
		d2, err := qemu.New(qemu.Options{})
		if err != nil {
			t.Fatal(err)
		}
		adopted, err := d2.Adopt(context.Background(), vm.spec)
		if err != nil {
			t.Fatal(err)
		}
		if adopted.PID() != inst.PID() || !adopted.Running() {
			t.Fatalf("adopted pid %d running=%v, want pid %d running", adopted.PID(), adopted.Running(), inst.PID())
		}
		if st, err := adopted.(*qemu.Instance).Status(context.Background()); err != nil || st != "running" {
			t.Errorf("status = %q, %v", st, err)
		}
		inst = adopted.(*qemu.Instance) // stop it through the adopted handle
	})

	// Ctrl-Alt-Del: the guest stops its processes, syncs and reboots, and QEMU exits.
	start := time.Now()
	graceful, err := vmm.Stop(context.Background(), inst, 30*time.Second)
	if err != nil || !graceful {
		t.Fatalf("stop: graceful=%v err=%v\nconsole:\n%s", graceful, err, vm.console())
	}
	t.Logf("ctrl-alt-del power-off took %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(vm.console(), "fcm-init: rebooting") {
		t.Errorf("the guest did not shut down through fcm-init; console:\n%s", vm.console())
	}
	if out, err := exec.Command("e2fsck", "-fn", vm.spec.Drives[1].Path).CombinedOutput(); err != nil {
		t.Errorf("the vm's disk is not clean after a graceful power-off: %v\n%s", err, out)
	}

	if _, err := d.Adopt(context.Background(), vm.spec); err != vmm.ErrNotRunning {
		t.Errorf("Adopt of a stopped vm = %v, want ErrNotRunning", err)
	}

	// Boot the same disk again: what was written survived, then the ACPI power button.
	vm.client.Close()
	inst = vm.boot(t, d)
	if out := vm.run(t, "cat /root/marker"); out != "kept" {
		t.Errorf("/root/marker after a reboot = %q, want kept", out)
	}
	if err := inst.PowerButton(context.Background()); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := inst.Wait(wctx); err != nil {
		t.Fatalf("after the power button: %v\nconsole:\n%s", err, vm.console())
	}
	if n := strings.Count(vm.console(), "fcm-init: shutdown: poweroff (power failure)"); n != 1 {
		t.Errorf("console shows %d power-button shutdowns, want 1:\n%s", n, vm.console())
	}

	// Tear down as the daemon will, and check that nothing is left.
	vm.destroy(t)
	if out, _ := exec.Command("pgrep", "-f", vm.spec.Dir).Output(); len(out) > 0 {
		t.Errorf("processes left running for the vm: %s", out)
	}
	if _, err := net.InterfaceByName(vm.spec.TapDevice); err == nil {
		t.Errorf("tap %s left behind", vm.spec.TapDevice)
	}
	if _, err := os.Stat(vm.spec.Dir); !os.IsNotExist(err) {
		t.Errorf("vm dir %s left behind (%v)", vm.spec.Dir, err)
	}
}

// destroy removes the VM's tap and directory (the VM must have stopped).
func (v *testVM) destroy(t *testing.T) {
	t.Helper()
	sh(t, "ip", "link", "del", v.spec.TapDevice)
	if err := os.RemoveAll(v.spec.Dir); err != nil {
		t.Fatal(err)
	}
}

// TestQEMU_FullImageHasAppToolchains boots the product's default image and checks
// what buildpacks will build apps with, the user they run as, and what the guest
// kernel needs for per-release network namespaces behind NAT.
func TestQEMU_FullImageHasAppToolchains(t *testing.T) {
	t.Parallel() // a VM of its own on fcm0, no daemon: beside TestDeploy_Runtimes
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	vm := newVMFrom(t, fullImageDir, "e2efull", "full-vm", net.IPv4(172, 16, 0, 70))
	inst := vm.boot(t, d)
	pinned := map[string]string{} // npm package -> version, from the recipe
	for _, p := range images.Variants["full"].NPM {
		if i := strings.LastIndex(p, "@"); i > 0 {
			pinned[p[:i]] = p[i+1:]
		}
	}
	// Each command's output must match its regular expression.
	for cmd, want := range map[string]string{
		"python3 --version":    `^Python 3\.14\.\d+$`,
		"python3.13 --version": `^Python 3\.13\.\d+$`,
		"python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'import sys; print(sys.prefix)'": `^/tmp/venv$`,
		"python3.13 -m venv /tmp/venv13 && /tmp/venv13/bin/python --version":                   `^Python 3\.13\.`,
		"pip3 --version":                  `^pip \d+`,
		"node --version":                  `^v24\.\d+\.\d+$`,
		"npm --version":                   `^\d+\.\d+\.\d+$`,
		"ruby --version":                  `^ruby 3\.3\.\d+`,
		"bundle --version":                `^(Bundler version )?\d+\.\d+\.\d+$`,
		"/usr/local/bin/bun --version":    "^" + regexp.QuoteMeta(pinned["bun"]) + "$",
		"bun -e 'console.log(6*7)'":       `^42$`,
		"/usr/local/bin/claude --version": "^" + regexp.QuoteMeta(pinned["@anthropic-ai/claude-code"]) + ` \(Claude Code\)$`,
		"git --version":                   `^git version 2\.`,
		"curl --version":                  `^curl \d+`,
		"gcc --version":                   `^gcc `,
		"make --version":                  `^GNU Make \d`,
		"tmux -V":                         `^tmux 3\.`,
		"id app":                          `^uid=1000\(app\) gid=1000\(app\) groups=1000\(app\)$`,
		"getent passwd app":               `^app:x:1000:1000::/home/app:/bin/bash$`,
		"runuser -u app -- sh -c 'cd && touch made-by-app && stat -c %U made-by-app'":   `^app$`,
		"ip link add v0 type veth peer name v1 && ip -o link show v1 && ip link del v0": `^\d+: v1@v0: `,
	} {
		if out := vm.run(t, cmd); !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("%s = %q, want it to match %s", cmd, out, want)
		}
	}
	// The image has no nft command: the modules the initrd loaded show that veth,
	// NAT chains and masquerading are there for whatever sets them up (netlink).
	loaded := strings.Fields(vm.run(t, "ls /sys/module"))
	for _, m := range []string{"veth", "nf_tables", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_nat", "nft_masq"} {
		if !slices.Contains(loaded, m) {
			t.Errorf("kernel module %s not loaded (loaded: %v)", m, loaded)
		}
	}
	if graceful, err := vmm.Stop(context.Background(), inst, 30*time.Second); err != nil || !graceful {
		t.Errorf("stop: graceful=%v err=%v", graceful, err)
	}
}

func TestQEMU_StartErrors(t *testing.T) {
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*vmm.Spec)
		want   string
	}{
		{"tap missing", func(s *vmm.Spec) { s.TapDevice = "tap_nothere" }, "tap_nothere"},
		{"kernel missing", func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux.bin" }, "/nonexistent/vmlinux.bin"},
		{"invalid spec", func(s *vmm.Spec) { s.MemoryMiB = 1 }, "memory"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := newVM(t, fmt.Sprintf("e2efail%d", i), "fail", net.IPv4(172, 16, 0, byte(100+i)))
			tt.mutate(&vm.spec)
			inst, err := d.Start(context.Background(), vm.spec)
			if err == nil {
				inst.Kill()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %q", err, tt.want)
			}
			if out, _ := exec.Command("pgrep", "-f", vm.spec.Dir).Output(); len(out) > 0 {
				t.Errorf("qemu left running after a failed start: %s", out)
			}
			if _, err := net.InterfaceByName("tap_nothere"); err == nil {
				t.Error("a failed start made a tap")
			}
			for _, f := range []string{qemu.PIDFile, qemu.QMPSocket} {
				if _, err := os.Stat(filepath.Join(vm.spec.Dir, f)); err == nil {
					t.Errorf("%s left behind", f)
				}
			}
		})
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	var last error
	for i := 0; i < 20; i++ {
		resp, err := c.Get(url)
		if err == nil {
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

// templateDir keeps the empty data disks the boot tests' VMs are cloned from,
// as a daemon keeps them in its data dir.
func templateDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(os.TempDir(), "fcm-e2e-templates")
}
