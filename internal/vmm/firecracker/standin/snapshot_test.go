package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSnapshotRules: the snapshot calls' rules that need no guest. PATCH /vm
// and create before a boot are refused; a load is refused (and the process
// lives on) when a resource was configured or the body names no or both
// memory sources; a load that fails past those checks answers 400 and ends
// the process, as Firecracker's does.
func TestSnapshotRules(t *testing.T) {
	kernel := tempFile(t, "vmlinux.bin", "kernel")
	s := start(t, nil)
	s.want("PATCH", "/vm", `{"state":"Resumed"}`, 400, msgBeforeStart)
	s.want("PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}`, 400, msgBeforeStart)
	s.want("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s"}`, 400, "Exactly one of mem_backend and mem_file_path")
	s.want("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m","mem_backend":{"backend_type":"File","backend_path":"/tmp/m"}}`, 400, "Exactly one of mem_backend and mem_file_path")
	s.want("PUT", "/logger", `{"log_path":"/dev/null"}`, 400, "not implemented") // refused: configures nothing
	s.want("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`, 204)
	s.want("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"File","backend_path":"/tmp/m"}}`, 400, msgLoadNotAllowed)
	if s.waitExit(300 * time.Millisecond) {
		t.Fatal("a refused load ended the process")
	}
	s.want("GET", "/", "", 200)

	notSnap := tempFile(t, "state", "not a snapshot\n")
	oldVersion := tempFile(t, "state", snapshotMagic+"1.16.0\n{}\n")
	mem := tempFile(t, "mem", "")
	for _, c := range []struct{ name, body, fault string }{
		{"missing state file", `{"snapshot_path":"/nonexistent/state","mem_backend":{"backend_type":"File","backend_path":"` + mem + `"}}`, "/nonexistent/state"},
		{"not a state file", `{"snapshot_path":"` + notSnap + `","mem_file_path":"` + mem + `"}`, "not a snapshot"},
		{"other version", `{"snapshot_path":"` + oldVersion + `","mem_file_path":"` + mem + `"}`, "version 1.16.0 does not match"},
		{"uffd", `{"snapshot_path":"` + notSnap + `","mem_backend":{"backend_type":"Uffd","backend_path":"/tmp/uffd.sock"}}`, "Uffd is not implemented"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := start(t, nil)
			s.want("PUT", "/snapshot/load", c.body, 400, "Failed to restore from snapshot", c.fault)
			if !s.waitExit(5 * time.Second) {
				t.Fatal("the process lives on after a failed load")
			}
			if code := s.cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit %v, want 1", s.cmd.ProcessState)
			}
		})
	}
}

// TestSnapshot boots a guest, pauses it, snapshots it, ends the process and
// loads the snapshot in a fresh one: the guest runs on without booting again,
// its memory the file mapped privately (QEMU never writes it); then it is
// snapshotted again (its memory now partly the file's, partly its own), Full
// and Diff, and the Diff, merged onto the file, loaded once more.
func TestSnapshot(t *testing.T) {
	kernel, initrd, rootfs := guestImage(t)
	sh(t, "ip", "link", "add", "fcsibr3", "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "fcsibr3").Run() })
	sh(t, "ip", "addr", "add", "172.16.0.1/24", "dev", "fcsibr3")
	sh(t, "ip", "link", "set", "fcsibr3", "up")
	makeTap(t, "fcsitap5")
	sh(t, "ip", "link", "set", "fcsitap5", "master", "fcsibr3")
	const addr = "172.16.0.50:22"
	snaps := tempDir(t)

	s := start(t, nil, "--id", "snap1")
	configure(s, kernel, initrd, rootfs, "fcsitap5")
	if _, err := sshBanner(addr, time.Now().Add(90*time.Second)); err != nil {
		t.Fatalf("guest sshd not up: %v", err)
	}
	state1, mem1 := filepath.Join(snaps, "state1"), filepath.Join(snaps, "mem1")
	create := fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state1, mem1)
	s.want("PUT", "/snapshot/create", create, 400, msgNotPaused)
	s.want("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}`, 400, msgAfterStart)
	s.want("PATCH", "/vm", `{"state":"Paused"}`, 204)
	s.want("PATCH", "/vm", `{"state":"Paused"}`, 204) // a repeat is a no-op
	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Paused"`) {
		t.Errorf("GET / of a paused vm = %s", r.body)
	}
	if _, err := sshBanner(addr, time.Now().Add(2*time.Second)); err == nil {
		t.Error("a paused guest answers SSH")
	}
	s.want("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":"/nonexistent/state","mem_file_path":%q}`, mem1), 400, "/nonexistent/state")
	// An existing file is truncated.
	if err := os.WriteFile(mem1, []byte(strings.Repeat("x", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	s.want("PUT", "/snapshot/create", create, 204)
	t.Logf("full snapshot of a 512 MiB guest in %s", time.Since(began).Round(time.Millisecond))
	checkMemFile(t, mem1, 512)
	if r := s.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Paused"`) {
		t.Errorf("GET / after a snapshot = %s", r.body)
	}
	// The vm may run on after a snapshot.
	s.want("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	s.want("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	if _, err := sshBanner(addr, time.Now().Add(30*time.Second)); err != nil {
		t.Fatalf("guest sshd not back after a resume: %v", err)
	}
	s.want("PATCH", "/vm", `{"state":"Paused"}`, 204)
	s.want("PUT", "/snapshot/create", create, 204)
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.waitExit(10 * time.Second)
	sum := fileSum(t, mem1)

	// A fresh process loads it, paused.
	s2 := start(t, nil, "--id", "snap2")
	began = time.Now()
	s2.want("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"track_dirty_pages":true,"resume_vm":false}`, state1, mem1), 204)
	t.Logf("loaded in %s", time.Since(began).Round(time.Millisecond))
	if r := s2.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Paused"`) {
		t.Errorf("GET / after a load = %s", r.body)
	}
	if r := s2.want("GET", "/machine-config", "", 200); string(r.body) != `{"vcpu_count":1,"mem_size_mib":512,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config after a load = %s", r.body)
	}
	s2.want("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state1, mem1), 400, msgAfterStart)
	s2.want("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":512}`, 400, msgAfterStart)
	qemuPID := child(t, s2.cmd.Process.Pid)
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", qemuPID))
	if !mapsPrivately(string(maps), mem1) {
		t.Errorf("QEMU does not map %s privately:\n%s", mem1, maps)
	}
	s2.want("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	if _, err := sshBanner(addr, time.Now().Add(30*time.Second)); err != nil {
		t.Fatalf("the loaded guest's sshd does not answer: %v", err)
	}
	if out := s2.stdout.String(); strings.Contains(out, "Linux version") {
		t.Errorf("the guest booted again after the load:\n%s", out)
	}
	time.Sleep(2 * time.Second) // the guest runs and writes to its memory
	if fileSum(t, mem1) != sum {
		t.Error("the memory file changed while the loaded guest ran")
	}

	// Again, from a guest whose memory is the file mapped privately.
	s2.want("PATCH", "/vm", `{"state":"Paused"}`, 204)
	s2.want("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state1, mem1), 400, "mapped from it")
	// A Diff holds only what changed since the load: the loaded file with it
	// merged on top is the guest's memory, which a fresh process loads.
	state2, diff := filepath.Join(snaps, "state2"), filepath.Join(snaps, "diff2")
	s2.want("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":"Diff"}`, state2, diff), 204)
	checkMemFile(t, diff, 512)
	if d, f := allocated(t, diff), allocated(t, mem1); d*4 > f {
		t.Errorf("the Diff holds %d KiB, the loaded file %d KiB: not just the pages written since the load", d>>10, f>>10)
	} else {
		t.Logf("Diff %d KiB on a memory file of %d KiB", d>>10, f>>10)
	}
	// QEMU 7.2 cannot save a machine twice without running it in between.
	s2.want("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state2+"x", diff+"x"), 400, "resumed in between")
	mem2 := filepath.Join(snaps, "mem2")
	sh(t, "cp", "--sparse=always", mem1, mem2)
	mergeOnto(t, mem2, diff)
	s2.cmd.Process.Signal(syscall.SIGKILL)
	s2.waitExit(10 * time.Second)
	s3 := start(t, nil)
	s3.want("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"resume_vm":true}`, state2, mem2), 204)
	if r := s3.want("GET", "/", "", 200); !strings.Contains(string(r.body), `"state":"Running"`) {
		t.Errorf("GET / after a load with resume_vm = %s", r.body)
	}
	if _, err := sshBanner(addr, time.Now().Add(30*time.Second)); err != nil {
		t.Fatalf("the guest loaded a second time does not answer: %v", err)
	}
	s3.want("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	if !s3.waitExit(30 * time.Second) {
		t.Fatal("a loaded guest's reboot did not end the process")
	}
}

// checkMemFile: a memory file is the guest's memory in size, its zero pages holes.
func checkMemFile(t *testing.T, path string, mib int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	used := st.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("memory file %s: %d MiB, %d MiB allocated", filepath.Base(path), st.Size()>>20, used>>20)
	if st.Size() != mib<<20 {
		t.Errorf("memory file is %d bytes, want %d", st.Size(), mib<<20)
	}
	if used >= st.Size() {
		t.Errorf("memory file is not sparse: %d bytes allocated", used)
	}
}

// allocated is how many bytes of path's are on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// mergeOnto writes the data (not the holes) of layer onto base at the same
// offsets, as Firecracker's snapshot-editor rebases a Diff.
func mergeOnto(t *testing.T, base, layer string) {
	t.Helper()
	l, err := os.ReadFile(layer)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(layer)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for off := int64(0); off < int64(len(l)); {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: holes to the end
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.WriteAt(l[start:end], start); err != nil {
			t.Fatal(err)
		}
		off = end
	}
}

// mapsPrivately says whether /proc/pid/maps has path mapped rw-p (private).
func mapsPrivately(maps, path string) bool {
	for _, line := range strings.Split(maps, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[5] == path && f[1] == "rw-p" {
			return true
		}
	}
	return false
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
