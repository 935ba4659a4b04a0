package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
)

const guestBootArgs = "console=ttyS0 reboot=k panic=1 pci=off quiet root=/dev/vda rw ip=172.16.0.50::172.16.0.1:255.255.255.0:standin:eth0:off"

// guestImage returns the test image's kernel and initrd, and a private sparse
// copy of its root filesystem.
func guestImage(t *testing.T) (kernel, initrd, rootfs string) {
	t.Helper()
	dir := os.Getenv("FCM_TEST_IMAGE")
	if dir == "" {
		dir = "/var/cache/fcm/test-image"
	}
	kernel, initrd = filepath.Join(dir, "vmlinux.bin"), filepath.Join(dir, "initrd.img")
	for _, f := range []string{kernel, initrd, filepath.Join(dir, "base-rootfs.img")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("guest image: %v (build it with 'make test-image' or set FCM_TEST_IMAGE)", err)
		}
	}
	rootfs = filepath.Join(tempDir(t), "rootfs.img")
	sh(t, "cp", "--sparse=always", filepath.Join(dir, "base-rootfs.img"), rootfs)
	return kernel, initrd, rootfs
}

// configure sends the configuration fcm's driver sends, in its order.
func configure(s *standin, kernel, initrd, rootfs, tap string) {
	s.want("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":%q}`, kernel, initrd, guestBootArgs), 204)
	s.want("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, rootfs), 204)
	s.want("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512}`, 204)
	if tap != "" {
		s.want("PUT", "/network-interfaces/eth0", fmt.Sprintf(`{"iface_id":"eth0","host_dev_name":%q,"guest_mac":"06:00:ac:10:00:32"}`, tap), 204)
	}
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
}

// sshBanner polls addr until an SSH server greets, or the deadline passes.
func sshBanner(addr string, deadline time.Time) (string, error) {
	var lastErr error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "SSH-2.0") {
				return strings.TrimSpace(line), nil
			}
			err = fmt.Errorf("read %q: %v", line, rerr)
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	return "", lastErr
}

// TestBoot boots the test image through the API, as fcm's driver does, to a
// running sshd, checks pre-boot operations are then refused, and stops it with
// SendCtrlAltDel: the guest reboots, QEMU exits and the stand-in with it.
func TestBoot(t *testing.T) {
	kernel, initrd, rootfs := guestImage(t)
	sh(t, "ip", "link", "add", "fcsibr0", "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "fcsibr0").Run() })
	sh(t, "ip", "addr", "add", "172.16.0.1/24", "dev", "fcsibr0")
	sh(t, "ip", "link", "set", "fcsibr0", "up")
	makeTap(t, "fcsitap2")
	sh(t, "ip", "link", "set", "fcsitap2", "master", "fcsibr0")

	s := start(t, nil, "--id", "boot1")
	began := time.Now()
	configure(s, kernel, initrd, rootfs, "fcsitap2")
	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Running"`) {
		t.Errorf("GET / after InstanceStart = %s", r.body)
	}
	for _, req := range [][2]string{
		{"/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel)},
		{"/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true}`, rootfs)},
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":256}`},
		{"/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap2"}`},
		{"/vsock", `{"guest_cid":3,"uds_path":"/tmp/v.sock"}`},
	} {
		s.want("PUT", req[0], req[1], 400, msgAfterStart)
	}
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, msgAfterStart)
	s.want("PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`, 400, "PATCH /drives/rootfs is not implemented")

	banner, err := sshBanner("172.16.0.50:22", time.Now().Add(60*time.Second))
	if err != nil {
		t.Fatalf("guest sshd not up after %v: %v", time.Since(began).Round(time.Millisecond), err)
	}
	t.Logf("guest sshd up %v after configuration began: %s", time.Since(began).Round(time.Millisecond), banner)
	if out := s.stdout.String(); !strings.Contains(out, "Server listening") {
		t.Errorf("guest console on stdout has no sshd start:\n%s", out)
	}

	s.want("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	stopAt := time.Now()
	if !s.waitExit(30 * time.Second) {
		t.Fatal("stand-in still running 30 s after SendCtrlAltDel")
	}
	t.Logf("stand-in exited %v after SendCtrlAltDel", time.Since(stopAt).Round(time.Millisecond))
	if !strings.Contains(s.stderr.String(), "SHUTDOWN, reason guest-reset") {
		t.Error("the stand-in did not see the guest reset")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %v, want 0", s.cmd.ProcessState)
	}
	for _, p := range []string{s.sock, s.sock + ".qmp"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}

	var got []string
	for _, r := range readRecord(t, s.record) {
		got = append(got, fmt.Sprintf("%s %s %d", r.Method, r.Path, r.Status))
	}
	want := []string{
		"PUT /boot-source 204", "PUT /drives/rootfs 204", "PUT /machine-config 204",
		"PUT /network-interfaces/eth0 204", "PUT /actions 204", "GET / 200",
		"PUT /boot-source 400", "PUT /drives/rootfs 400", "PUT /machine-config 400",
		"PUT /network-interfaces/eth0 400", "PUT /vsock 400", "PUT /actions 400",
		"PATCH /drives/rootfs 400", "PUT /actions 204",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("record:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSignalKillsQEMU: SIGTERM to a stand-in with a running VM ends QEMU too.
func TestSignalKillsQEMU(t *testing.T) {
	kernel, initrd, rootfs := guestImage(t)
	s := start(t, nil)
	configure(s, kernel, initrd, rootfs, "")
	qemuPID := child(t, s.cmd.Process.Pid)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", qemuPID)); !strings.HasPrefix(string(comm), "qemu") {
		t.Fatalf("child %d is %q, not QEMU", qemuPID, comm)
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.waitExit(10 * time.Second) {
		t.Fatal("still running 10 s after SIGTERM")
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(qemuPID, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU (pid %d) outlived the stand-in", qemuPID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range []string{s.sock, s.sock + ".qmp"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// child returns the one child process of pid.
func child(t *testing.T, pid int) int {
	t.Helper()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var kids []int
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(data)) {
			n, _ := strconv.Atoi(w)
			kids = append(kids, n)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("stand-in %d has children %v, want one QEMU", pid, kids)
	}
	return kids[0]
}

// TestBoot_Drives boots the test image with four drives, as fcm's VMs have
// them, in the sandbox fcm's driver makes (the stand-in and QEMU run as the
// VM's user): the shared root image read-only, root-owned and 0444, configured
// last; the guest must see it as /dev/vda and the others in configuration
// order, and mount it read-only from the root=/dev/vda ro the stand-in appends
// (boot_args have no root=).
func TestBoot_Drives(t *testing.T) {
	kernel, initrd, base := guestImage(t)
	if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o444); err != nil {
		t.Fatal(err)
	}
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Sizes in 512-byte sectors, all different so the guest's names tell them apart.
	sectors := map[string]int64{"data": 131072, "swap": 65536, "config": 2048}
	paths := map[string]string{"base": base}
	for id, n := range sectors {
		paths[id] = filepath.Join(dir, id+".img")
		f, err := os.Create(paths[id])
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(n * 512)
		f.Close()
	}
	st, err := os.Stat(base)
	if err != nil {
		t.Fatal(err)
	}
	sectors["base"] = st.Size() / 512

	s := startWith(t, nil, sandboxed(t, vmm.Spec{Kernel: kernel, Initrd: initrd, Drives: []vmm.Drive{
		{ID: "base", Path: base, ReadOnly: true, Shared: true},
		{ID: "data", Path: paths["data"]}, {ID: "swap", Path: paths["swap"]},
		{ID: "config", Path: paths["config"], ReadOnly: true},
	}}), "--id", "drives")
	s.want("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":"console=ttyS0 reboot=k panic=1 loglevel=7"}`, kernel, initrd), 204)
	for _, d := range []struct {
		id       string
		root, ro bool
	}{{"data", false, false}, {"swap", false, false}, {"config", false, true}, {"base", true, true}} {
		s.want("PUT", "/drives/"+d.id, fmt.Sprintf(`{"drive_id":%q,"path_on_host":%q,"is_root_device":%t,"is_read_only":%t}`, d.id, paths[d.id], d.root, d.ro), 204)
	}
	s.want("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512}`, 204)
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", child(t, s.cmd.Process.Pid)))
	if want := fmt.Sprintf("\nUid:\t%d\t", vmUID); !strings.Contains(string(status), want) {
		t.Errorf("QEMU does not run as the VM's user %d:\n%s", vmUID, status)
	}

	mounted := regexp.MustCompile(`EXT4-fs \(vda\): mounted filesystem.*`)
	initrdFailed := regexp.MustCompile(`fcm-initrd: [^b]`)
	deadline := time.Now().Add(60 * time.Second)
	for !mounted.MatchString(s.stdout.String()) {
		// The initrd's own lines are its boot stages ("fcm-initrd: boot 1.2s
		// initrd") or a failure, which ends the wait.
		if time.Now().After(deadline) || initrdFailed.MatchString(s.stdout.String()) || s.waitExit(0) {
			t.Fatalf("the guest did not mount its root device:\n%s", s.stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	console := s.stdout.String()
	t.Logf("guest: %s", mounted.FindString(console))
	if m := regexp.MustCompile(`Kernel command line: (.*)`).FindStringSubmatch(console); m == nil ||
		!strings.HasSuffix(tscArg.ReplaceAllString(strings.TrimSpace(m[1]), ""), " loglevel=7 pci=off root=/dev/vda ro") {
		t.Errorf("kernel command line %q, want boot_args then pci=off root=/dev/vda ro", m)
	}
	for dev, id := range map[string]string{"vda": "base", "vdb": "data", "vdc": "swap", "vdd": "config"} {
		if want := fmt.Sprintf("[%s] %d 512-byte logical blocks", dev, sectors[id]); !strings.Contains(console, want) {
			t.Errorf("the guest's %s is not %s: no %q in its console", dev, id, want)
		}
	}
}
