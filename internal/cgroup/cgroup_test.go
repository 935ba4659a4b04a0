package cgroup

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testID is a VM id no real VM has, unique per run.
func testID(t *testing.T, what string) string {
	return fmt.Sprintf("test%s%d", what, os.Getpid())
}

// runIn starts script in group g (at spawn on v2, by Join before it goes on
// on v1: the script first waits for a line on stdin) and returns how it ended
// and what it printed.
func runIn(t *testing.T, g *Group, script string) (*os.ProcessState, string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read go; "+script)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	g.Prepare(cmd.SysProcAttr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	if got := Of(cmd.Process.Pid); got != g.ID {
		t.Errorf("Of(%d) = %q, want %q", cmd.Process.Pid, got, g.ID)
	}
	io.WriteString(stdin, "go\n")
	stdin.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%q did not end within 60s", script)
	}
	return cmd.ProcessState, out.String()
}

// allocate holds n MB in the shell's memory (a command substitution).
func allocate(mb int) string {
	return fmt.Sprintf(`x=$(head -c %d /dev/zero | tr '\0' a); echo "held ${#x} bytes"`, mb<<20)
}

func TestCgroup_MemoryLimit(t *testing.T) {
	v, err := Version()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cgroup v%d", v)

	t.Run("over the limit is OOM-killed", func(t *testing.T) {
		id := testID(t, "oom")
		g, err := Create(id, Limits{MemoryBytes: 32 << 20, CPUWeight: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer Remove(id)
		defer g.Close()
		if lim, err := MemoryLimit(id); err != nil || lim != 32<<20 {
			t.Fatalf("MemoryLimit = %d, %v; want %d", lim, err, 32<<20)
		}
		ids, err := List()
		if err != nil || !slices.Contains(ids, id) {
			t.Fatalf("List() = %v, %v; want it to contain %s", ids, err, id)
		}
		st, out := runIn(t, g, allocate(96))
		ws := st.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("a shell holding 96 MB under a 32 MiB limit ended with %v (output %q); want killed by SIGKILL", st, out)
		}
		if err := Remove(id); err != nil {
			t.Fatal(err)
		}
		dirs, _ := Dirs(id)
		for _, d := range dirs {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after Remove, %s: %v; want it gone", d, err)
			}
		}
		if ids, _ := List(); slices.Contains(ids, id) {
			t.Errorf("after Remove, List() = %v still has %s", ids, id)
		}
		if err := Remove(id); err != nil {
			t.Errorf("second Remove: %v; want nil (idempotent)", err)
		}
	})

	t.Run("under the limit runs", func(t *testing.T) {
		id := testID(t, "ok")
		g, err := Create(id, ForVM(128, 2))
		if err != nil {
			t.Fatal(err)
		}
		defer Remove(id)
		defer g.Close()
		st, out := runIn(t, g, allocate(16))
		if !st.Success() || !strings.Contains(out, fmt.Sprintf("held %d bytes", 16<<20)) {
			t.Fatalf("a shell holding 16 MB under a %d MiB limit ended with %v, output %q; want success", ForVM(128, 2).MemoryBytes>>20, st, out)
		}
		if err := Remove(id); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCgroup_RemoveBusy(t *testing.T) {
	id := testID(t, "busy")
	g, err := Create(id, ForVM(128, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	cmd := exec.Command("sleep", "1")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	g.Prepare(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Remove waits out a process that is about to exit.
	go cmd.Wait()
	start := time.Now()
	if err := Remove(id); err != nil {
		t.Fatalf("Remove while a 1s process ends: %v", err)
	}
	if time.Since(start) < 500*time.Millisecond {
		t.Errorf("Remove returned after %s, before the process in it had exited", time.Since(start))
	}
}

func TestForVM(t *testing.T) {
	l := ForVM(1024, 4)
	if want := int64(1024+204+128) << 20; l.MemoryBytes < want-1<<20 || l.MemoryBytes > want+1<<20 {
		t.Errorf("ForVM(1024, 4).MemoryBytes = %d MiB, want about %d MiB", l.MemoryBytes>>20, want>>20)
	}
	if l.CPUWeight != 400 {
		t.Errorf("ForVM(1024, 4).CPUWeight = %d, want 400", l.CPUWeight)
	}
}

// Kill ends every process of a VM's cgroup, children too, and Remove then
// leaves nothing: the cleanup for a hypervisor fcm lost track of.
func TestCgroup_KillAndRemove(t *testing.T) {
	id := testID(t, "kill")
	g, err := Create(id, ForVM(128, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	// The shell forks its sleeps only once told to, after the join (on cgroup
	// v1 the join follows the start), so they are in the cgroup too.
	cmd := exec.Command("sh", "-c", "read go; sleep 300 & sleep 300 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	g.Prepare(cmd.SysProcAttr)
	tell, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	tell.Write([]byte("go\n"))
	var pids []int
	for i := 0; i < 100 && len(pids) < 3; i++ {
		time.Sleep(20 * time.Millisecond)
		pids, _ = Procs(id)
	}
	if len(pids) != 3 {
		t.Fatalf("Procs = %v; want the shell and its two sleeps", pids)
	}
	if err := Kill(id); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() // the shell, ours; the sleeps are reaped by init
	if err := Remove(id); err != nil {
		t.Fatalf("Remove after Kill: %v", err)
	}
	if pids, err := Procs(id); err != nil || len(pids) != 0 {
		t.Errorf("after Kill and Remove, Procs = %v, %v", pids, err)
	}
}

// TestProcessCPUSeconds: this process's CPU time, read from /proc, grows
// while it spins.
func TestProcessCPUSeconds(t *testing.T) {
	before := processCPUSeconds(os.Getpid())
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
	}
	if after := processCPUSeconds(os.Getpid()); after-before < 0.1 {
		t.Errorf("CPU seconds %.2f -> %.2f after 300 ms of spinning", before, after)
	}
}
