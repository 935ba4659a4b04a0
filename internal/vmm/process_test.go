package vmm

import (
	"context"
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
