// Package qemu is the vmm driver for QEMU's microvm machine: the same kernel,
// initrd, ext4 disk and tap as Firecracker, with virtio-mmio devices found through
// ACPI. It uses KVM when the host can, software emulation (TCG) otherwise, a QMP
// socket for graceful power-down and status, a pid file and a serial log per VM.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/vmm"
)

func init() {
	vmm.Register("qemu", func() (vmm.Driver, error) { return New(Options{}) })
}

// Options configure the driver; the zero value probes everything.
type Options struct {
	Binary string       // default qemu-system-x86_64 from PATH
	Accel  Accel        // "" probes: KVM when usable, else TCG
	Logger *slog.Logger // default slog.Default()
}

// Driver boots VMs with qemu-system-x86_64 -M microvm.
type Driver struct {
	binary string
	accel  Accel
	tscKHz int
	log    *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New finds QEMU and decides the accelerator, logging which and why.
func New(opts Options) (*Driver, error) {
	d := &Driver{binary: opts.Binary, accel: opts.Accel, log: opts.Logger}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.binary == "" {
		d.binary = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(d.binary)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %s not found (install the qemu-system-x86 package): %w", d.binary, err)
	}
	d.binary = path
	reason := "chosen by configuration"
	if d.accel == "" {
		d.accel, reason = ProbeAccel()
	}
	if d.accel != KVM && d.accel != TCG {
		return nil, fmt.Errorf("qemu driver: unknown accelerator %q (want kvm or tcg)", d.accel)
	}
	d.tscKHz = HostTSCKHz()
	d.log.Info("qemu driver ready", "binary", d.binary, "accel", d.accel, "why", reason)
	return d, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Accel reports the accelerator guests run with.
func (d *Driver) Accel() Accel { return d.accel }

// Args returns the command line Start runs for spec (for logs and tests).
func (d *Driver) Args(spec vmm.Spec) []string { return args(spec, d.accel, d.tscKHz) }

// Start implements vmm.Driver. QEMU runs in the foreground of its own session
// (not -daemonize: the seccomp sandbox's spawn=deny and elevateprivileges=deny
// forbid the fork and setsid that daemonizing needs), as the VM's unprivileged
// user and in its cgroup (vmm.PrepareSandbox), its stderr in qemu.log. Start
// returns once QMP answers; an error in the configuration (a missing tap, a bad
// kernel) makes QEMU exit first, and its message is returned.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	inst, err := d.start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return inst, nil
}

// start is Start, with extra arguments appended to QEMU's command line.
func (d *Driver) start(ctx context.Context, spec vmm.Spec, extra ...string) (*Instance, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	// As root QEMU would make a missing tap itself, one nobody would remove; the
	// tap belongs to the network setup, so its absence is an error, as in Firecracker.
	if spec.TapDevice != "" {
		if _, err := net.InterfaceByName(spec.TapDevice); err != nil {
			return nil, fmt.Errorf("vm %s: tap device %s: %w", spec.ID, spec.TapDevice, err)
		}
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	pidFile := filepath.Join(spec.Dir, PIDFile)
	sock := filepath.Join(spec.Dir, QMPSocket)
	if err := vmm.RefuseRunning(ctx, d, spec); err != nil {
		return nil, err
	}
	os.Remove(pidFile)
	os.Remove(sock)

	sb, err := vmm.PrepareSandbox(spec, d.accel == KVM)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(spec.Dir, LogFile)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		sb.Abort()
		return nil, fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(d.binary, append(d.Args(spec), extra...)...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: a Ctrl-C on the daemon's terminal never reaches a VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	sb.Apply(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		sb.Abort()
		return nil, fmt.Errorf("vm %s: start qemu: %w", spec.ID, err)
	}
	pid := cmd.Process.Pid
	serr := sb.Started(pid)
	proc, err := vmm.OpenProcess(pid, sock)
	if err != nil {
		cmd.Process.Kill()
		werr := cmd.Wait()
		sb.Abort()
		return nil, fmt.Errorf("vm %s: qemu exited at once (%v): %s", spec.ID, werr, logSince(logPath, start))
	}
	cmd.Process.Release() // reaped through the pidfd (Wait), not exec.Cmd
	inst := &Instance{Process: proc, qmpSocket: sock}
	fail := func(err error) (*Instance, error) {
		inst.Kill()
		inst.Process.Wait(context.Background())
		inst.Close()
		sb.Abort()
		os.Remove(pidFile)
		os.Remove(sock)
		return nil, fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	if serr != nil {
		return fail(serr)
	}
	if err := waitQMP(ctx, inst, pidFile); err != nil {
		if !proc.Running() {
			proc.Wait(context.Background())
			how := ""
			if e := proc.Exit(); e != "" {
				how = " (" + e + ")"
			}
			return fail(fmt.Errorf("qemu failed to start%s: %s", how, logSince(logPath, start)))
		}
		return fail(err)
	}
	d.log.Info("vm started", "id", spec.ID, "pid", pid, "accel", d.accel, "uid", spec.UID)
	return inst, nil
}

// qmpWait bounds how long QEMU may take from exec to answering on QMP.
const qmpWait = 30 * time.Second

// waitQMP waits until QEMU has written its pid file and answers on QMP, or
// has exited.
func waitQMP(ctx context.Context, inst *Instance, pidFile string) error {
	deadline := time.Now().Add(qmpWait)
	// Poll often at first (QEMU answers within tens of milliseconds on an idle
	// host), less once it is slow.
	poll := time.Millisecond
	for {
		if _, err := os.Stat(pidFile); err == nil {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := inst.Status(qctx)
			cancel()
			if err == nil {
				return nil
			}
		}
		if !inst.Running() {
			return errors.New("qemu exited during start")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu did not answer on %s within %s", inst.qmpSocket, qmpWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		poll = min(2*poll, 20*time.Millisecond)
	}
}

// logSince returns what QEMU wrote to its log after offset (at most its last
// 4 KiB), for errors.
func logSince(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "no output (" + err.Error() + ")"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size()-offset > 4<<10 {
		offset = st.Size() - 4<<10
	}
	data, _ := io.ReadAll(io.NewSectionReader(f, offset, 4<<10))
	if s := strings.TrimSpace(string(data)); s != "" {
		return s
	}
	return "no output"
}

// Adopt implements vmm.Driver: the pid file (or, without one, a scan of /proc)
// names the process, and its command line must name this VM's QMP socket. A
// process found that way whose QMP does not answer, or whose socket is gone, is
// alive: Adopt returns a *vmm.UnresponsiveError holding it, never ErrNotRunning.
func (d *Driver) Adopt(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	sock := filepath.Join(spec.Dir, QMPSocket)
	proc, err := vmm.Find(filepath.Join(spec.Dir, PIDFile), sock)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Process: proc, qmpSocket: sock}
	if _, err := inst.Status(ctx); err != nil {
		return nil, &vmm.UnresponsiveError{Instance: &vmm.Stray{Process: proc}, Err: fmt.Errorf("qmp %s: %w", sock, err)}
	}
	return inst, nil
}

// Instance is a running QEMU.
type Instance struct {
	*vmm.Process
	qmpSocket string
}

var (
	_ vmm.Instance = (*Instance)(nil)
	_ vmm.Pauser   = (*Instance)(nil)
)

// Shutdown sends Ctrl-Alt-Del, as Firecracker does: the guest init stops its
// services, syncs, unmounts and reboots, and -no-reboot turns that into exit.
func (i *Instance) Shutdown(ctx context.Context) error {
	keys := []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
	}
	return qmp(ctx, i.qmpSocket, "send-key", map[string]any{"keys": keys}, nil)
}

// PowerButton presses the ACPI power button; the guest shuts down as for Shutdown.
func (i *Instance) PowerButton(ctx context.Context) error {
	return qmp(ctx, i.qmpSocket, "system_powerdown", nil, nil)
}

// Status returns QEMU's run state ("running", "paused", "shutdown", ...).
func (i *Instance) Status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := qmp(ctx, i.qmpSocket, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// RunState implements vmm.Pauser: QMP query-status, "io-error" when QEMU
// stopped the guest on a failed disk write (werror=enospc, QEMU's default).
func (i *Instance) RunState(ctx context.Context) (string, error) { return i.Status(ctx) }

// Pause implements vmm.Pauser: QMP stop, which drains the block requests in
// flight before it answers.
func (i *Instance) Pause(ctx context.Context) error {
	return qmp(ctx, i.qmpSocket, "stop", nil, nil)
}

// Resume implements vmm.Pauser: QMP cont; QEMU retries the failed requests.
func (i *Instance) Resume(ctx context.Context) error {
	return qmp(ctx, i.qmpSocket, "cont", nil, nil)
}

// Wait implements vmm.Instance; once QEMU has exited its cgroup is removed.
func (i *Instance) Wait(ctx context.Context) error {
	group := cgroup.Of(i.PID())
	if err := i.Process.Wait(ctx); err != nil {
		return err
	}
	return vmm.RemoveCgroup(i.Process, group)
}

// Kill implements vmm.Instance.
func (i *Instance) Kill() error {
	err := i.Signal(syscall.SIGKILL)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}
