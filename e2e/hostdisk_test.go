package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/vm"
	"golang.org/x/sys/unix"
)

// loopDataDir is a data dir on an ext4 filesystem of size bytes of its own (a
// sparse file on a loop device), with no blocks reserved for root: the daemon
// gets no more room than the hypervisors when it is full.
func loopDataDir(t *testing.T, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	sh(t, "mkfs.ext4", "-q", "-F", "-m", "0", backing)
	dir, err := os.MkdirTemp("", "fcm-")
	if err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-o", "loop", backing, dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			return
		}
		os.Remove(dir)
	})
	return dir
}

// freeOn is what an unprivileged write may still use on dir's filesystem.
func freeOn(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// TestHostDisk_Full: on a small data dir, (a) a create beyond what the VMs
// were promised is refused with the numbers (HTTP 507); (b) with
// --disk-overcommit raised it is admitted, and a guest that fills the host's
// disk leaves its VM paused (host disk full) while the daemon keeps answering
// and recording, and refuses creates; (c) freeing space on the host resumes
// the VM by itself, its data intact and its SSH answering.
func TestHostDisk_Full(t *testing.T) {
	dataDir := loopDataDir(t, 3<<30)
	cleanupVMs(t, dataDir)
	logDir := t.TempDir()
	start := func(extra ...string) *daemonProc {
		return startDaemonLog(t, "qemu", dataDir, imageDir, logDir, append([]string{"--disk-reserve", "256M"}, extra...)...)
	}
	d := start()
	work := t.TempDir()
	create := []string{"create", "--no-git", "--disk", "1G", "--memory", "512"}
	d.mustCLI(work, append(create, "--name", "full")...)

	// (a) The first VM took 1.5 GiB of promise (disk and swap) and used
	// almost none of it: a second does not fit what is left.
	t.Logf("free after the first vm: %d MiB", freeOn(t, dataDir)>>20)
	out, code := d.cli(work, append(create, "--name", "spare")...)
	for _, want := range []string{"not enough disk space on " + dataDir, "this vm asks for 1.5 GiB (1.0 GiB disk, 0.5 GiB swap)",
		"less a 0.2 GiB reserve", "is promised to the vms there are and not yet used by them", "--disk-overcommit 1 "} {
		if code == 0 || !strings.Contains(out, want) {
			t.Fatalf("a create beyond the promise: exit %d, want %q in:\n%s", code, want, out)
		}
	}
	body, _ := json.Marshal(api.CreateVMRequest{Name: "spare", DiskBytes: 1 << 30, MemoryMiB: 512})
	req, _ := http.NewRequest("POST", "http://"+daemonListen+"/v1/vms", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+d.token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Error, Code string }
	json.NewDecoder(resp.Body).Decode(&apiErr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInsufficientStorage || apiErr.Code != api.CodeInsufficientStorage {
		t.Fatalf("POST /v1/vms beyond the promise: %d %+v", resp.StatusCode, apiErr)
	}
	if _, ok := d.vms(work)["spare"]; ok {
		t.Fatal("a refused create left a vm")
	}

	// (b) Overcommitted three times, it fits.
	d.stop(syscall.SIGTERM)
	d = start("--disk-overcommit", "3")
	d.mustCLI(work, append(create, "--name", "spare")...)
	d.inVM(work, "full", "echo written-before > /root/marker && sync")

	// The host's disk all but full (a file of root's), then the guest writes
	// more than is left.
	filler := filepath.Join(dataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, freeOn(t, dataDir)-100<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Logf("free with the filler: %d MiB", freeOn(t, dataDir)>>20)
	d.inVM(work, "full", "setsid sh -c 'dd if=/dev/zero of=/root/big bs=1M count=300 conv=fsync 2>/root/dd.err; echo $? > /root/dd.done' </dev/null >/dev/null 2>&1 &")
	paused := d.waitVM(t, work, "full", 2*time.Minute, "paused", func(v api.VM) bool { return v.State == api.StatePaused })
	if paused.Reason != "host disk full" {
		t.Errorf("paused vm's reason: %q, want host disk full", paused.Reason)
	}
	if free := freeOn(t, dataDir); free > 8<<20 {
		t.Errorf("the guest paused with %d MiB free on the host", free>>20)
	}
	t.Logf("paused; free on the host: %d KiB", freeOn(t, dataDir)>>10)
	// The daemon answers, records (the pause above was a write; a rule is
	// another) and refuses creates below the reserve.
	// About 1 MiB of config vars: the store grows into blocks it has never
	// written, which only its reserve holds now.
	config := []string{"config", "set", "-a", "spare"}
	for i := range 15 {
		config = append(config, fmt.Sprintf("BIG%d=%s", i, strings.Repeat(fmt.Sprint(i%10), 60<<10)))
	}
	if out, code := d.cli(work, config...); code != 0 {
		t.Fatalf("fcm config set of 15 vars of 60 KiB on a full disk: exit %d:\n%s", code, out)
	}
	if out := d.mustCLI(work, "config", "spare", "--json"); !strings.Contains(out, "BIG14") {
		t.Errorf("config vars set while the disk was full are not listed")
	}
	d.mustCLI(work, "users", "allow", "disk-full@example.org")
	if out := d.mustCLI(work, "users", "ls"); !strings.Contains(out, "disk-full@example.org") {
		t.Errorf("a rule added while the disk was full is not listed:\n%s", out)
	}
	out, code = d.cli(work, append(create, "--name", "third")...)
	if code == 0 || !strings.Contains(out, "not more than the 256 MiB reserve") && !strings.Contains(out, "not more than the 0.2 GiB reserve (fcm daemon --disk-reserve)") {
		t.Errorf("a create on a full disk: exit %d:\n%s", code, out)
	}
	if vm := d.vms(work)["spare"]; vm.State != api.StateRunning {
		t.Errorf("the other vm is %s (%s)", vm.State, vm.Reason)
	}
	// A second guest that writes is paused too, and can still be stopped (at
	// once: a paused guest cannot shut down) and destroyed.
	d.inVM(work, "spare", "setsid sh -c 'dd if=/dev/zero of=/root/big bs=1M count=50 conv=fsync' </dev/null >/dev/null 2>&1 &")
	d.waitVM(t, work, "spare", time.Minute, "paused", func(v api.VM) bool { return v.State == api.StatePaused })
	d.mustCLI(work, "stop", "spare")
	if v := d.vms(work)["spare"]; v.State != api.StateStopped || v.Desired != api.DesiredStopped {
		t.Errorf("a paused vm after fcm stop: %s (desired %s)", v.State, v.Desired)
	}
	if !strings.Contains(d.log(), "killing the hypervisor of a paused vm") {
		t.Errorf("stop of a paused vm did not kill its hypervisor at once:\n%s", tail(d.log(), 2000))
	}
	began := time.Now()
	d.mustCLI(work, "destroy", "spare")
	t.Logf("destroyed a paused vm in %s", time.Since(began).Round(time.Second))
	if _, ok := d.vms(work)["spare"]; ok {
		t.Error("the paused vm is still listed after its destroy")
	}
	if free := freeOn(t, dataDir); free > 256<<20 {
		t.Fatalf("destroying spare freed %d MiB: more than the reserve, the test cannot tell what resumes full", free>>20)
	}
	time.Sleep(2 * vm.HostDiskEvery) // not resumed with less than the reserve free
	if v := d.vms(work)["full"]; v.State != api.StatePaused {
		t.Fatalf("with less than the reserve free the vm is %s", v.State)
	}

	// (c) Space back: the VM resumes by itself and finishes its write.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	resumed := d.waitVM(t, work, "full", time.Minute, "running again", func(v api.VM) bool { return v.State == api.StateRunning })
	if resumed.Reason != "" {
		t.Errorf("resumed vm still has reason %q", resumed.Reason)
	}
	var kinds []string
	for _, e := range resumed.Events {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, " "); !strings.HasSuffix(got, "paused resumed") {
		t.Errorf("the vm's events: %q, want paused then resumed last", got)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for d.inVM(work, "full", "cat /root/dd.done 2>/dev/null || true") == "" {
		if time.Now().After(deadline) {
			t.Fatalf("the guest's write never finished after the resume:\n%s", d.log())
		}
		time.Sleep(time.Second)
	}
	if got := d.inVM(work, "full", "cat /root/dd.done /root/marker; stat -c %s /root/big"); got != fmt.Sprintf("0\nwritten-before\n%d", 300<<20) {
		t.Errorf("after the resume: dd exit, marker, size:\n%s\ndd: %s", got, d.inVM(work, "full", "cat /root/dd.err"))
	}
	log := d.log()
	for _, want := range []string{`msg="vm paused: host disk full; it resumes when more than the reserve is free" name=full`,
		`msg="vm resumed: host disk has space again" name=full`} {
		if strings.Count(log, want) != 1 {
			t.Errorf("daemon log has %d lines %q, want 1", strings.Count(log, want), want)
		}
	}
	d.mustCLI(work, "destroy", "full")
}

// TestHostDisk_FirecrackerReports: Firecracker does not pause a guest whose
// disk write fails on the host; the guest gets an I/O error. The stand-in
// does the same: with the host's disk full, a guest's write fails (its
// kernel logs the I/O error), its VM stays running and answers, and nothing
// is recorded paused.
func TestHostDisk_FirecrackerReports(t *testing.T) {
	dataDir := loopDataDir(t, 3<<30)
	cleanupVMs(t, dataDir)
	d := startDaemonLog(t, "firecracker", dataDir, imageDir, t.TempDir(), "--disk-reserve", "256M")
	work := t.TempDir()
	d.mustCLI(work, "create", "--no-git", "--disk", "1G", "--memory", "512", "--name", "fc")
	filler := filepath.Join(dataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, freeOn(t, dataDir)-50<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The guest's kernel gets the error. What its dd then sees depends on
	// when: a failed fsync returns it, but pages dirtied after ext4 aborted its
	// journal can never be written back, and dd waits on them for ever (as it
	// would under Firecracker). So the test reads the guest's kernel log.
	d.inVM(work, "fc", "setsid sh -c 'dd if=/dev/zero of=/root/big bs=1M count=200 conv=fsync' </dev/null >/dev/null 2>&1 &")
	deadline := time.Now().Add(2 * time.Minute)
	var klog string
	for {
		klog = d.inVM(work, "fc", "dmesg | grep -m3 'I/O error, dev vdb, .*WRITE'; true")
		if strings.Contains(klog, "I/O error, dev vdb") {
			break
		}
		if time.Now().After(deadline) {
			diag, err := d.inVMErr(work, "fc", "ps -o pid,stat,wchan:20,args; dmesg | tail -20")
			t.Fatalf("the guest's kernel reported no write error on its disk within 2 min: %+v\nin the guest (%v):\n%s", d.vms(work)["fc"], err, diag)
		}
		time.Sleep(time.Second)
	}
	t.Logf("the guest's kernel:\n%s", klog)
	if free := freeOn(t, dataDir); free > 8<<20 {
		t.Errorf("the host's disk was not full: %d MiB free", free>>20)
	}
	time.Sleep(2 * vm.HostDiskEvery)
	if v := d.vms(work)["fc"]; v.State != api.StateRunning || v.Reason != "" {
		t.Errorf("the firecracker vm is %s (%q), want running", v.State, v.Reason)
	}
	if got := d.inVM(work, "fc", "echo answers"); got != "answers\n" && got != "answers" {
		t.Errorf("the guest after its disk failed: %q", got)
	}
	os.Remove(filler)
	began := time.Now()
	d.mustCLI(work, "destroy", "fc")
	t.Logf("destroyed in %s", time.Since(began).Round(time.Millisecond))
}
