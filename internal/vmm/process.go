package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Process is a hypervisor process that may not be our child (daemonized, or left
// by an earlier daemon): it is watched through a pidfd, so waiting works for any
// process and a recycled pid is never mistaken for the VM.
type Process struct {
	pid int

	mu    sync.RWMutex // Close waits for a Wait or Running in progress
	pidfd int          // -1 once closed
	exit  string       // how it ended, once reaped as our child ("" unknown)
	oom   bool         // the kernel's OOM killer ended it (RemoveCgroup)
}

// errClosed is what Wait returns once the Process has been closed.
var errClosed = errors.New("process handle closed")

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

// Find opens the hypervisor of a VM: the pid in pidFile if it names a live
// process whose command line contains marker, else any process whose command
// line contains marker (a hypervisor started by a daemon killed before it
// wrote the pid file, or whose pid file was lost). ErrNotRunning when none.
func Find(pidFile, marker string) (*Process, error) {
	if pid, err := ReadPIDFile(pidFile); err == nil {
		p, err := OpenProcess(pid, marker)
		if err == nil || !errors.Is(err, ErrNotRunning) {
			return p, err
		}
	}
	return FindByMarker(marker)
}

// FindByMarker scans /proc for a live process (other than this one) whose
// command line contains marker. ErrNotRunning when there is none.
func FindByMarker(marker string) (*Process, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, path := range paths {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(cmdline), marker) {
			continue
		}
		if p, err := OpenProcess(pid, marker); err == nil {
			return p, nil
		}
	}
	return nil, ErrNotRunning
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

// Running reports whether the process has not exited (false once closed).
func (p *Process) Running() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.pidfd < 0 {
		return false
	}
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
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.pidfd < 0 {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.pid, errClosed)
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// Wait blocks until the process exits or ctx ends. If the process is our child
// it is reaped too. Closing the Process ends a Wait with an error.
func (p *Process) Wait(ctx context.Context) error {
	for {
		exited, err := p.poll(100)
		if err != nil {
			return fmt.Errorf("wait for pid %d: %w", p.pid, err)
		}
		if exited {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for pid %d: %w", p.pid, err)
		}
	}
}

// poll waits up to ms milliseconds for the process to exit, reaping it if it
// is our child, under the read lock so that Close never frees the pidfd (whose
// number could be reused) while it is polled.
func (p *Process) poll(ms int) (bool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.pidfd < 0 {
		return false, errClosed
	}
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, ms)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return false, err
	}
	if n > 0 {
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PIDFD, p.pidfd, &info, unix.WEXITED|unix.WNOHANG, nil); err == nil {
			if e := describeExit(&info); e != "" {
				p.exit = e
			}
		}
		return true, nil
	}
	return false, nil
}

// Exit says how the process ended ("exited with status 1", "killed by signal
// 9 (killed)"), once Wait has seen it end; "" when that is not known (it was not
// our child: adopted from an earlier daemon).
func (p *Process) Exit() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.exit
}

// OOMKilled says whether the kernel's OOM killer ended a process in its
// cgroup (the VM's memory limit), once Wait has seen it end.
func (p *Process) OOMKilled() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.oom
}

// describeExit reads a SIGCHLD siginfo: si_code says how the child ended and
// si_status the exit status or signal (after si_pid and si_uid in the union).
func describeExit(info *unix.Siginfo) string {
	b := (*[128]byte)(unsafe.Pointer(info))
	status := int32(binary.NativeEndian.Uint32(b[24:28]))
	switch info.Code {
	case 1: // CLD_EXITED
		return fmt.Sprintf("exited with status %d", status)
	case 2, 3: // CLD_KILLED, CLD_DUMPED
		return fmt.Sprintf("killed by signal %d (%s)", status, unix.SignalName(unix.Signal(status)))
	}
	return ""
}

// Close releases the pidfd; a second Close does nothing.
func (p *Process) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return nil
	}
	err := unix.Close(p.pidfd)
	p.pidfd = -1
	return err
}
