package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm"
)

// putDrive configures one drive; ro "" leaves is_read_only out.
func (s *standin) putDrive(id, path string, root bool, ro string, extra string, status int, faults ...string) {
	s.t.Helper()
	body := fmt.Sprintf(`{"drive_id":%q,"path_on_host":%q,"is_root_device":%t`, id, path, root)
	if ro != "" {
		body += `,"is_read_only":` + ro
	}
	s.want("PUT", "/drives/"+id, body+extra+"}", status, faults...)
}

// startFails sends InstanceStart, which QEMU fails (the kernel is not one), and
// returns what QEMU was run with.
func (s *standin) startFails() (cmdline, drives string) {
	s.t.Helper()
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "Failed to start the microVM", "qemu-system-x86_64 exited")
	c, d := s.launch()
	return c, strings.Join(d, " ")
}

// disks writes small disk images named ids in one directory.
func disks(t *testing.T, ids ...string) map[string]string {
	t.Helper()
	dir := tempDir(t)
	paths := map[string]string{}
	for _, id := range ids {
		paths[id] = filepath.Join(dir, id+".img")
		if err := os.WriteFile(paths[id], make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return paths
}

// TestDrives checks drives are attached as Firecracker orders them (the root
// device first, the others in configuration order, a PUT replacing a drive in
// place), read-only ones read-only, and the command line gets what Firecracker
// appends to boot_args.
func TestDrives(t *testing.T) {
	kernel := tempFile(t, "vmlinux.bin", "not a kernel")
	d := disks(t, "base", "data", "swap", "swap2", "config")
	s := start(t, nil)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0 fcm=1"}`, 204)
	s.putDrive("data", d["data"], false, "", "", 204)
	s.putDrive("swap", d["swap"], false, "false", "", 204)
	s.putDrive("config", d["config"], false, "true", "", 204)
	s.putDrive("base", d["base"], true, "true", "", 204) // the root device last
	s.putDrive("data", d["data"], true, "false", "", 400, "A root block device already exists!", "base")
	cmdline, drives := s.startFails()
	if want := "console=ttyS0 fcm=1 pci=off root=/dev/vda ro"; cmdline != want {
		t.Errorf("command line %q, want %q", cmdline, want)
	}
	if want := "base:ro data:rw swap:rw config:ro"; drives != want {
		t.Errorf("drives %q, want %q", drives, want)
	}

	// A PUT on an existing drive replaces it where it is; a root device with a
	// partuuid is root=PARTUUID=; the init arguments after " -- " (the first
	// not in double quotes) stay last.
	s.putDrive("swap", d["swap2"], false, "true", "", 204)
	s.putDrive("base", d["base"], true, "false", `,"partuuid":"0eaa91a0-01"`, 204)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0 fcm=\"a -- b\" -- init1 init2"}`, 204)
	cmdline, drives = s.startFails()
	if want := `console=ttyS0 fcm="a -- b" pci=off root=PARTUUID=0eaa91a0-01 rw -- init1 init2`; cmdline != want {
		t.Errorf("command line %q, want %q", cmdline, want)
	}
	if want := "base:rw data:rw swap:ro config:ro"; drives != want {
		t.Errorf("drives after replacing %q, want %q", drives, want)
	}
	if _, line, _ := strings.Cut(s.stderr.String()[strings.LastIndex(s.stderr.String(), "InstanceStart:"):], " -drive id=swap,file="); !strings.HasPrefix(line, d["swap2"]+",") {
		t.Errorf("swap is not attached from its new path %s: %s", d["swap2"], line)
	}
}

// TestDrives_NoRoot: Firecracker boots without a root device, with no root= on
// the command line; a drive made the root device later swaps places with the
// first.
func TestDrives_NoRoot(t *testing.T) {
	kernel := tempFile(t, "vmlinux.bin", "not a kernel")
	d := disks(t, "a", "b", "c")
	s := start(t, nil)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	cmdline, drives := s.startFails()
	if want := defaultBootArgs + " pci=off"; cmdline != want || drives != "" {
		t.Errorf("no drives: command line %q, drives %q; want %q and none", cmdline, drives, want)
	}
	for _, id := range []string{"a", "b", "c"} {
		s.putDrive(id, d[id], false, "false", "", 204)
	}
	cmdline, drives = s.startFails()
	if want := defaultBootArgs + " pci=off"; cmdline != want || drives != "a:rw b:rw c:rw" {
		t.Errorf("no root device: command line %q, drives %q; want %q and a b c", cmdline, drives, want)
	}
	s.putDrive("c", d["c"], true, "true", "", 204)
	cmdline, drives = s.startFails()
	if !strings.HasSuffix(cmdline, " pci=off root=/dev/vda ro") || drives != "c:ro b:rw a:rw" {
		t.Errorf("c made the root device: command line %q, drives %q; want root=/dev/vda ro and c b a", cmdline, drives)
	}
	s.putDrive("c", d["c"], false, "true", "", 204) // no longer the root device
	s.putDrive("a", d["a"], true, "false", "", 204)
	cmdline, drives = s.startFails()
	if !strings.HasSuffix(cmdline, " pci=off root=/dev/vda rw") || drives != "a:rw b:rw c:ro" {
		t.Errorf("a made the root device: command line %q, drives %q; want root=/dev/vda rw and a b c", cmdline, drives)
	}
}

// TestDrives_Limit: Firecracker on x86_64 has IRQs for 17 virtio devices
// (drives and network interfaces); more fail InstanceStart.
func TestDrives_Limit(t *testing.T) {
	makeTap(t, "fcsitap3")
	kernel := tempFile(t, "vmlinux.bin", "not a kernel")
	var ids []string
	for i := range 17 {
		ids = append(ids, fmt.Sprintf("d%d", i))
	}
	d := disks(t, ids...)
	s := start(t, nil)
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	s.putDrive("d0", d["d0"], true, "", "", 204)
	for _, id := range ids[1:] {
		s.putDrive(id, d[id], false, "", "", 204)
	}
	if _, drives := s.startFails(); len(strings.Fields(drives)) != 17 {
		t.Errorf("QEMU got drives %q, want 17", drives)
	}
	s.want("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap3"}`, 204)
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "Could not allocate GSI", "17 drives and 1 network interfaces")
}

// TestDrives_Unprivileged runs the stand-in as the VM's own user, in the
// sandbox fcm's driver makes: a shared, root-owned, 0444 drive opens read-only
// but not read-write (Firecracker opens a drive at PUT, for writing unless
// is_read_only), and QEMU, as that user, opens it read-only.
func TestDrives_Unprivileged(t *testing.T) {
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel, base, data := filepath.Join(dir, "vmlinux.bin"), filepath.Join(dir, "base.img"), filepath.Join(dir, "data.img")
	for f, content := range map[string]string{kernel: "not a kernel", base: "base", data: "data"} {
		if err := os.WriteFile(f, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	s := startWith(t, nil, sandboxed(t, vmm.Spec{Kernel: kernel, Drives: []vmm.Drive{
		{ID: "base", Path: base, ReadOnly: true, Shared: true}, {ID: "data", Path: data},
	}}))
	if st, err := os.Stat(data); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the sandbox did not take over the data drive: %v %v", st.Mode(), err)
	}
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	s.putDrive("base", base, true, "false", "", 400, "Unable to create the virtio block device", base, "permission denied")
	s.putDrive("base", base, true, "true", "", 204)
	s.putDrive("data", data, false, "false", "", 204)
	cmdline, drives := s.startFails()
	if drives != "base:ro data:rw" || !strings.HasSuffix(cmdline, " root=/dev/vda ro") {
		t.Errorf("command line %q, drives %q", cmdline, drives)
	}
	// QEMU got as far as the kernel: it opened both drives.
	last := s.stderr.String()[strings.LastIndex(s.stderr.String(), "InstanceStart:"):]
	if strings.Contains(last, "Permission denied") || strings.Contains(last, "Could not open") {
		t.Errorf("QEMU could not open a drive as uid %d:\n%s", vmUID, last)
	}
	if st, err := os.Stat(base); err != nil || st.Mode().Perm() != 0o444 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the sandbox took over the shared drive: %v", err)
	}
}
