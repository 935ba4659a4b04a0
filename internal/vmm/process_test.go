package vmm

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestProcess_RunningUnderSignals: a live process is reported running every
// time, even while this process is busy with signals (Go preempts goroutines
// with SIGURG, which interrupts poll).
func TestProcess_RunningUnderSignals(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	p, err := OpenProcess(cmd.Process.Pid, "sleep")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a storm of signals to ourselves
		for {
			select {
			case <-stop:
				return
			default:
				syscall.Kill(syscall.Getpid(), syscall.SIGURG)
			}
		}
	}()
	for i := 0; i < 200000; i++ {
		if !p.Running() {
			t.Fatalf("Running() = false on call %d for a live process", i)
		}
	}
	cmd.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Error("Running() = true after the process exited")
	}
	if _, err := OpenProcess(cmd.Process.Pid, "sleep"); err != ErrNotRunning {
		t.Errorf("OpenProcess of a dead pid = %v, want ErrNotRunning", err)
	}
}

// TestOpenProcess_RightAfterStart: a process opened the moment it was started
// is found by its command line (the kernel fills it in after waking the parent).
func TestOpenProcess_RightAfterStart(t *testing.T) {
	for i := 0; i < 100; i++ {
		cmd := exec.Command("sleep", "30")
		cmd.Args[0] = "marker-" + t.Name()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p, err := OpenProcess(cmd.Process.Pid, "marker-"+t.Name())
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		p.Close()
	}
}

// TestFind_WithoutPIDFile (L6): a hypervisor whose pid file is missing or
// stale is still found by the marker on its command line.
func TestFind_WithoutPIDFile(t *testing.T) {
	dir := t.TempDir()
	marker := dir + "/firecracker.socket"
	cmd := exec.Command("sleep", "30")
	cmd.Args[0] = marker
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for _, pidFile := range map[string]string{"missing": dir + "/none.pid", "stale": writeTemp(t, dir, "1\n")} {
		p, err := Find(pidFile, marker)
		if err != nil {
			t.Fatalf("Find(%s) = %v", pidFile, err)
		}
		if p.PID() != cmd.Process.Pid {
			t.Errorf("Find found pid %d, want %d", p.PID(), cmd.Process.Pid)
		}
		p.Close()
	}
	if _, err := Find(dir+"/none.pid", dir+"/other.socket"); err != ErrNotRunning {
		t.Errorf("Find of an absent marker = %v, want ErrNotRunning", err)
	}
}

func writeTemp(t *testing.T, dir, content string) string {
	path := dir + "/stale.pid"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestProcess_Close (L5): Close ends a Wait in progress, is idempotent, and a
// closed process reports not running.
func TestProcess_Close(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.Args[0] = "marker-" + t.Name()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	p, err := OpenProcess(cmd.Process.Pid, "marker-"+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- p.Wait(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Wait on a closed process returned nil, as if it had exited")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end Wait")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if p.Running() {
		t.Error("a closed process reports running")
	}
}

// TestProcess_Exit: how a child hypervisor ended is known once Wait has seen
// it: its exit status, or the signal that killed it.
func TestProcess_Exit(t *testing.T) {
	for _, tc := range []struct {
		args []string
		kill bool
		want string
	}{
		{[]string{"sh", "-c", "sleep 0.2; exit 3"}, false, "exited with status 3"},
		{[]string{"sleep", "30"}, true, "killed by signal 9 (SIGKILL)"},
	} {
		cmd := exec.Command(tc.args[0], tc.args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p, err := OpenProcess(cmd.Process.Pid, tc.args[len(tc.args)-1])
		if err != nil {
			t.Fatal(err)
		}
		cmd.Process.Release()
		if p.Exit() != "" {
			t.Errorf("Exit() = %q while it runs", p.Exit())
		}
		if tc.kill {
			p.Signal(syscall.SIGKILL)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		if got := p.Exit(); got != tc.want {
			t.Errorf("%v: Exit() = %q, want %q", tc.args, got, tc.want)
		}
		p.Close()
	}
}
