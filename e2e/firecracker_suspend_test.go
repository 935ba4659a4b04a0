package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/firecracker"
)

// TestFirecracker_SuspendRestore: the Firecracker driver, on the stand-in,
// suspends a guest with a running process and a file through Firecracker's
// snapshot API (its process exits, leaving a state file and the guest's
// memory in the memory file) and restores it in a fresh process: the same
// boot, the process still running, the file there, the memory file never
// written while the restored guest runs. Then again, from the restored
// guest, whose suspend is a Diff snapshot of the pages it wrote, merged onto
// the memory file. Every call passed the stand-in's spec checks, in
// Firecracker's order.
func TestFirecracker_SuspendRestore(t *testing.T) {
	var logBuf strings.Builder
	var logMu sync.Mutex
	d, err := firecracker.New(firecracker.Options{Binary: filepath.Join(standinDir, "firecracker"),
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	v := newVM(t, "fcsusp01", "fc-sleepy", net.IPv4(172, 16, 0, 62))
	v.spec.MemoryFile = filepath.Join(v.spec.Dir, "mem.ram")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, err := d.Start(ctx, v.spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Wait(context.Background()) })
	if err := v.client.WaitReady(ctx); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, readFile(filepath.Join(v.spec.Dir, firecracker.ConsoleLog)))
	}
	bootID := v.run(t, "cat /proc/sys/kernel/random/boot_id")
	pid := v.run(t, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/tick.new; mv /root/tick.new /root/tick; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $!")
	v.run(t, "echo kept > /root/file; sync")

	for round := 1; round <= 2; round++ {
		began := time.Now()
		if err := d.Suspend(ctx, inst, v.spec); err != nil {
			t.Fatalf("suspend %d: %v", round, err)
		}
		t.Logf("suspend %d: %s", round, time.Since(began).Round(time.Millisecond))
		if inst.Running() {
			t.Fatalf("suspend %d: firecracker still runs", round)
		}
		st, err := os.Stat(filepath.Join(v.spec.Dir, vmm.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		mem, err := os.Stat(v.spec.MemoryFile)
		if err != nil {
			t.Fatal(err)
		}
		if mem.Size() != int64(v.spec.MemoryMiB)<<20 {
			t.Errorf("memory file %d bytes, want the guest's %d MiB", mem.Size(), v.spec.MemoryMiB)
		}
		t.Logf("state file %d KiB, memory file %d MiB", st.Size()>>10, mem.Size()>>20)
		for _, f := range []string{vmm.StateFile + ".new", "mem.ram.new", "mem.ram" + vmm.MemoryLayerSuffix,
			"mem.ram" + vmm.MemoryLayerSuffix + ".new", firecracker.SocketFile, firecracker.PIDFile} {
			if _, err := os.Stat(filepath.Join(v.spec.Dir, f)); err == nil {
				t.Errorf("suspend %d left %s behind", round, f)
			}
		}
		v.client.Close()
		sum := sha256File(t, v.spec.MemoryFile)

		time.Sleep(time.Second)
		began = time.Now()
		restored, err := d.Restore(ctx, v.spec)
		if err != nil {
			t.Fatalf("restore %d: %v\nconsole:\n%s", round, err, readFile(filepath.Join(v.spec.Dir, firecracker.ConsoleLog)))
		}
		inst = restored
		if state, err := restored.(vmm.Pauser).RunState(ctx); err != nil || state != "paused" {
			t.Errorf("restore %d: run state %q (%v), want paused", round, state, err)
		}
		if err := restored.(vmm.Pauser).Resume(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("restore %d and resume: %s", round, time.Since(began).Round(time.Millisecond))
		if err := v.client.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		if got := v.run(t, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("restore %d: boot id %s, was %s: the guest booted again", round, got, bootID)
		}
		if got := v.run(t, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Errorf("restore %d: the guest's process %s: %q", round, pid, got)
		}
		if got := v.run(t, "cat /root/file"); got != "kept" {
			t.Errorf("restore %d: the guest's file: %q", round, got)
		}
		t1, _ := strconv.Atoi(v.run(t, "cat /root/tick"))
		time.Sleep(1200 * time.Millisecond)
		t2, _ := strconv.Atoi(v.run(t, "cat /root/tick; echo round"+strconv.Itoa(round)+" > /root/file2"))
		if t2 <= t1 {
			t.Errorf("restore %d: the guest's loop does not run: tick %d then %d", round, t1, t2)
		}
		if sha256File(t, v.spec.MemoryFile) != sum {
			t.Errorf("restore %d: the memory file changed while the restored guest ran", round)
		}
	}
	if got := v.run(t, "cat /root/file2"); got != "round2" {
		t.Errorf("after two rounds /root/file2 is %q", got)
	}
	// What each suspend wrote of the guest's memory: all of it, then only
	// what the restored guest changed.
	logMu.Lock()
	log := logBuf.String()
	logMu.Unlock()
	re := regexp.MustCompile(`msg="vm suspended" .*snapshot=(\w+) memory_written_kib=(\d+)`)
	var kinds []string
	var kib []int
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[2])
		kinds, kib = append(kinds, m[1]), append(kib, n)
	}
	if strings.Join(kinds, ",") != "Full,Diff" || kib[1]*4 > kib[0] {
		t.Errorf("suspends %v wrote %v KiB of memory, want a Full, then a Diff of much less:\n%s", kinds, kib, log)
	} else {
		t.Logf("memory written: Full %d KiB, Diff %d KiB", kib[0], kib[1])
	}

	// The driver's calls, as the stand-in recorded and accepted them.
	var calls []string
	for _, r := range readRequests(t, filepath.Join(v.spec.Dir, firecracker.SocketFile+".requests.jsonl")) {
		if r.Status >= 300 {
			t.Errorf("%s %s refused: %s (body %s)", r.Method, r.Path, r.Fault, r.Body)
		}
		call := r.Method + " " + r.Path
		switch call {
		case "PATCH /vm", "PUT /snapshot/create", "PUT /snapshot/load":
			call += " " + string(r.Body)
		}
		calls = append(calls, call)
	}
	// The guest it booted: a Full snapshot; the guest it restored: a Diff
	// (dirty pages tracked since the load) into a layer, merged onto the
	// memory file once the process is gone.
	dir := v.spec.Dir
	suspend := func(kind, mem string) []string {
		return []string{`PATCH /vm {"state":"Paused"}`,
			fmt.Sprintf(`PUT /snapshot/create {"snapshot_type":"%s","snapshot_path":"%s/suspend.state.new","mem_file_path":"%s/%s.new"}`, kind, dir, dir, mem)}
	}
	wake := []string{
		fmt.Sprintf(`PUT /snapshot/load {"snapshot_path":"%s/suspend.state","mem_backend":{"backend_type":"File","backend_path":"%s/mem.ram"},"track_dirty_pages":true,"resume_vm":false}`, dir, dir),
		"GET /",
		`PATCH /vm {"state":"Resumed"}`,
	}
	tail := slices.Concat(suspend("Full", "mem.ram"), wake, suspend("Diff", "mem.ram"+vmm.MemoryLayerSuffix), wake)
	if len(calls) < len(tail) || strings.Join(calls[len(calls)-len(tail):], "\n") != strings.Join(tail, "\n") {
		t.Errorf("the driver's calls:\n%s\nwant them to end:\n%s", strings.Join(calls, "\n"), strings.Join(tail, "\n"))
	}
}

// lockedWriter serializes writes to w (a log read while it is written).
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
