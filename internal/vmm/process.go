package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Process is a hypervisor process that may not be our child (daemonized, or left
// by an earlier daemon): it is watched through a pidfd, so waiting works for any
// process and a recycled pid is never mistaken for the VM.
type Process struct {
	pid   int
	pidfd int
}

// OpenProcess opens pid after checking that its command line contains marker
// (a path unique to the VM), so a pid file left by a dead VM whose pid was
// reused by something else is not adopted.
func OpenProcess(pid int, marker string) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, ErrNotRunning
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// A process that has just exec'd reads an empty command line until the kernel
	// has set up its arguments (its vfork parent is woken before that); so does
	// one that is exiting. Wait out the first.
	var cmdline []byte
	for i := 0; i < 200; i++ {
		cmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(cmdline), marker) {
		unix.Close(fd)
		return nil, ErrNotRunning
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && isZombie(string(st)) {
		unix.Close(fd)
		return nil, ErrNotRunning
	}
	return &Process{pid: pid, pidfd: fd}, nil
}

func isZombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && len(stat) > i+2 && stat[i+2] == 'Z'
}

// ReadPIDFile reads a pid written by a hypervisor.
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, ErrNotRunning
		}
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("bad pid file %s: %q", path, data)
	}
	return pid, nil
}

// PID returns the process id.
func (p *Process) PID() int { return p.pid }

// Running reports whether the process has not exited.
func (p *Process) Running() bool {
	for {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue // Go's own preemption signals interrupt syscalls; not an exit
		}
		return err == nil && n == 0
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// Wait blocks until the process exits or ctx ends. If the process is our child
// it is reaped too.
func (p *Process) Wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for pid %d: %w", p.pid, err)
		}
		if n > 0 {
			var info unix.Siginfo
			unix.Waitid(unix.P_PIDFD, p.pidfd, &info, unix.WEXITED|unix.WNOHANG, nil)
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for pid %d: %w", p.pid, err)
		}
	}
}

// Close releases the pidfd.
func (p *Process) Close() error { return unix.Close(p.pidfd) }
