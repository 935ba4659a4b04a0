package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "Firecracker v1.17.0-dev (fcm stand-in)\n" {
		t.Errorf("--version printed %q", out)
	}
}

// TestFlags checks Firecracker's flags are accepted, --id shows in GET /, and
// a bad command line exits 1 with a message.
func TestFlags(t *testing.T) {
	s := start(t, nil, "--id", "vm-1", "--log-path", "/dev/null", "--level", "Debug", "--show-level",
		"--show-log-origin", "--seccomp-filter", "/nonexistent", "--no-seccomp", "--boot-timer",
		"--http-api-max-payload-size", "100", "--mmds-size-limit", "1000", "--metadata", "/nonexistent")
	var info map[string]string
	if err := json.Unmarshal(s.want("GET", "/", "", 200).body, &info); err != nil {
		t.Fatal(err)
	}
	if info["id"] != "vm-1" || info["state"] != "Not started" || info["app_name"] != "Firecracker" || info["vmm_version"] != "1.17.0-dev" {
		t.Errorf("GET / = %v", info)
	}
	s.want("PUT", "/mmds", `{"a":"`+strings.Repeat("x", 200)+`"}`, 400, "larger than the limit of 100")

	anon := start(t, nil)
	if r := anon.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"id":"anonymous-instance"`) {
		t.Errorf("GET / without --id = %s", r.body)
	}

	sock := filepath.Join(tempDir(t), "fc.sock")
	for _, args := range [][]string{
		{"--api-sock", sock, "--bogus"},
		{"--api-sock", sock, "--config-file", "vm.json"},
		{"--id", "x"},
		{"--api-sock", sock, "extra"},
		{"--api-sock", sock, "--id", "bad/id"},
	} {
		cmd := exec.Command(binary, args...)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || len(out) == 0 {
			t.Errorf("%v: %v, output %q; want exit 1 with a message", args, err, out)
		}
		if _, err := os.Lstat(sock); err == nil {
			t.Errorf("%v left the socket behind", args)
		}
	}
}

// TestSocketInUse: an existing path at --api-sock is refused as Firecracker does.
func TestSocketInUse(t *testing.T) {
	sock := tempFile(t, "fc.sock", "")
	out, err := exec.Command(binary, "--api-sock", sock).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1", err)
	}
	if want := "Failed to open the API socket at " + sock + ": address in use\n"; string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("the existing file was removed: %v", err)
	}
}

// TestRules checks Firecracker's configuration rules before boot.
func TestRules(t *testing.T) {
	makeTap(t, "fcsitap1")
	kernel := tempFile(t, "vmlinux.bin", "kernel")
	disk := tempFile(t, "rootfs.img", "disk")
	s := start(t, nil, "--id", "rules")

	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Not started"`) {
		t.Errorf("GET / = %s", r.body)
	}
	if r := s.want("GET", "/machine-config", "", 200); string(r.body) != `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("default machine config %s", r.body)
	}
	if r := s.want("GET", "/version", "", 200); string(r.body) != `{"firecracker_version":"1.17.0-dev"}` {
		t.Errorf("GET /version = %s", r.body)
	}
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, msgNoKernel)
	s.want("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 400, msgBeforeStart)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, 400, "/nonexistent/vmlinux", "no such file or directory")
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+filepath.Dir(kernel)+`"}`, 400, "is a directory")
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","initrd_path":"/nonexistent/initrd"}`, 400, "initrd", "/nonexistent/initrd", "no such file or directory")
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, msgNoKernel) // refused PUTs change nothing
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	// No root device: Firecracker starts all the same (here QEMU then fails on the kernel).
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "qemu-system-x86_64 exited", "invalid kernel header")
	s.want("PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/nonexistent/disk"}`, 400, "/nonexistent/disk", "no such file or directory")
	s.want("PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true}`, 400, "path_on_host")
	s.want("PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"socket":"/tmp/vhost.sock"}`, 400, "vhost-user-block", "not implemented")
	s.want("PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"`+disk+`"}`, 204)
	s.want("PUT", "/drives/second", `{"drive_id":"second","is_root_device":true,"path_on_host":"`+disk+`"}`, 400, "A root block device already exists")
	s.want("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsinotap"}`, 400, "Open tap device failed", "fcsinotap")
	s.want("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap1","guest_mac":"06:00:zz:00:00:01"}`, 400, "MAC", "06:00:zz:00:00:01")
	s.want("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap1","guest_mac":"06:00:ac:10:00:02"}`, 204)
	s.want("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"fcsitap1"}`, 400, "fcsitap1", "already in use")
	s.want("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":0}`, 400, "memory size")
	s.want("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":256,"smt":true}`, 400, "vCPU number is invalid")
	s.want("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":256}`, 204)
	if r := s.want("GET", "/machine-config", "", 200); string(r.body) != `{"vcpu_count":3,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("machine config after PUT %s", r.body)
	}
	s.want("PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204)
	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Not started"`) {
		t.Errorf("GET / = %s", r.body)
	}
}

// TestStartFailure: a QEMU that cannot start makes InstanceStart a 400 with
// QEMU's error; the configured command line is the default or boot_args alone.
func TestStartFailure(t *testing.T) {
	kernel := tempFile(t, "vmlinux.bin", "not a kernel")
	disk := tempFile(t, "rootfs.img", "disk")
	s := start(t, nil)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	s.want("PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"`+disk+`"}`, 204)
	os.Remove(disk) // QEMU will not find it
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "Failed to start the microVM", "qemu-system-x86_64 exited", disk, "No such file or directory")
	if !strings.Contains(s.stderr.String(), "-append "+defaultBootArgs+" ") {
		t.Errorf("QEMU did not get Firecracker's default command line:\n%s", s.stderr)
	}
	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Not started"`) {
		t.Errorf("GET / after a failed start = %s", r.body)
	}
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0 fcm=1"}`, 204)
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "qemu-system-x86_64 exited")
	last := s.stderr.String()[strings.LastIndex(s.stderr.String(), "InstanceStart:"):]
	if !strings.Contains(last, "-append console=ttyS0 fcm=1 ") || strings.Contains(last, "8250.nr_uarts") {
		t.Errorf("boot_args did not replace the default:\n%s", last)
	}
}

// TestSignal: SIGTERM ends an idle stand-in and removes its socket.
func TestSignal(t *testing.T) {
	s := start(t, nil)
	s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.waitExit(5 * time.Second) {
		t.Fatal("still running 5 s after SIGTERM")
	}
	if ws, ok := s.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("exit %v, want killed by SIGTERM", s.cmd.ProcessState)
	}
	if _, err := os.Lstat(s.sock); err == nil {
		t.Error("socket left behind")
	}
}
