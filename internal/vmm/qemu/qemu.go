// Package qemu is the vmm driver for QEMU's microvm machine: the same kernel,
// initrd, ext4 disk and tap as Firecracker, with virtio-mmio devices found through
// ACPI. It uses KVM when the host can, software emulation (TCG) otherwise, a QMP
// socket for graceful power-down and status, a pid file and a serial log per VM.
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

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

// Start implements vmm.Driver. QEMU daemonizes once the machine is set up, so an
// error in the configuration (a missing tap, a bad kernel) is reported here.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
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

	cmd := exec.Command(d.binary, d.Args(spec)...)
	cmd.Dir = spec.Dir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	// Its own session: a Ctrl-C on the daemon's terminal never reaches a VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		d.cleanupFailed(spec)
		return nil, fmt.Errorf("vm %s: qemu failed to start: %w: %s", spec.ID, err, strings.TrimSpace(stderr.String()))
	}
	inst, err := d.Adopt(ctx, spec)
	if err != nil {
		d.cleanupFailed(spec)
		return nil, fmt.Errorf("vm %s: qemu started but %w", spec.ID, err)
	}
	d.log.Info("vm started", "id", spec.ID, "pid", inst.PID(), "accel", d.accel)
	return inst, nil
}

// cleanupFailed kills a QEMU that daemonized although Start then failed.
func (d *Driver) cleanupFailed(spec vmm.Spec) {
	pidFile := filepath.Join(spec.Dir, PIDFile)
	if pid, err := vmm.ReadPIDFile(pidFile); err == nil {
		if p, err := vmm.OpenProcess(pid, filepath.Join(spec.Dir, QMPSocket)); err == nil {
			p.Signal(syscall.SIGKILL)
			p.Wait(context.Background())
			p.Close()
		}
	}
	os.Remove(pidFile)
	os.Remove(filepath.Join(spec.Dir, QMPSocket))
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

var _ vmm.Instance = (*Instance)(nil)

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

// Kill implements vmm.Instance.
func (i *Instance) Kill() error {
	err := i.Signal(syscall.SIGKILL)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}
