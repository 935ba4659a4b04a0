// Package firecracker is the vmm driver for Firecracker: it starts the
// firecracker binary on a unix socket in the VM's directory and configures the
// microVM through Firecracker's HTTP API (boot source, drives, machine config,
// eth0, InstanceStart), written here over net/http. Graceful stop is
// SendCtrlAltDel; a VM still running after the deadline is killed. An optional
// jailer mode runs firecracker through Firecracker's jailer.
package firecracker

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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/vmm"
)

func init() {
	vmm.Register("firecracker", func() (vmm.Driver, error) { return New(Options{}) })
}

// Files inside the VM directory.
const (
	SocketFile  = "firecracker.socket"
	PIDFile     = "firecracker.pid"
	ConsoleLog  = "console.log" // firecracker's stdout: the guest's serial console
	socketWait  = 5 * time.Second
	defaultBase = "/srv/jailer"
)

// Options configure the driver.
type Options struct {
	Binary string       // default firecracker from PATH
	Jailer *Jailer      // run through the jailer when set
	Logger *slog.Logger // default slog.Default()
}

// Driver boots VMs with Firecracker.
type Driver struct {
	binary string
	jailer *Jailer
	log    *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New finds the firecracker binary.
func New(opts Options) (*Driver, error) {
	d := &Driver{binary: opts.Binary, jailer: opts.Jailer, log: opts.Logger}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.binary == "" {
		d.binary = "firecracker"
	}
	path, err := exec.LookPath(d.binary)
	if err != nil {
		return nil, fmt.Errorf("firecracker driver: %s not found (see the README's Firecracker section): %w", d.binary, err)
	}
	d.binary = path
	out, err := exec.Command(path, "--version").Output()
	version := string(out)
	if err != nil {
		version = "unknown (" + err.Error() + ")"
	}
	d.log.Info("firecracker driver ready", "binary", path, "version", trimLine(version), "jailer", d.jailer != nil)
	return d, nil
}

// lastLine returns the last line a process wrote to its log, for errors. It
// reads only the log's last 64 KiB: a guest may have written a lot to it.
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "no output (" + err.Error() + ")"
	}
	defer f.Close()
	var off int64
	if st, err := f.Stat(); err == nil && st.Size() > tailBytes {
		off = st.Size() - tailBytes
	}
	data, err := io.ReadAll(io.NewSectionReader(f, off, tailBytes))
	if err != nil {
		return "no output (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return lines[len(lines)-1]
}

// tailBytes is how much of a console log lastLine reads.
const tailBytes = 64 << 10

func trimLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// Command returns the program and arguments Start runs for spec.
func (d *Driver) Command(spec vmm.Spec) (string, []string) {
	sock := filepath.Join(spec.Dir, SocketFile)
	if d.jailer != nil {
		return d.jailer.Binary, d.jailer.Args(d.binary, spec.ID)
	}
	return d.binary, []string{"--api-sock", sock, "--id", spec.ID}
}

// Start implements vmm.Driver: start firecracker, wait for its socket, then
// configure and start the microVM. On error the process is killed and its socket
// and pid file removed.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	inst, abort, err := d.launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := configure(ctx, inst.api, spec); err != nil {
		return nil, abort(err)
	}
	d.log.Info("vm started", "id", spec.ID, "pid", inst.PID(), "hypervisor", "firecracker", "uid", spec.UID)
	return inst, nil
}

// launch starts a firecracker process for spec, as the VM's user in its
// cgroup, and waits for its API socket. abort kills it, removes its socket
// and pid file, and returns its argument as the VM's error.
func (d *Driver) launch(ctx context.Context, spec vmm.Spec) (inst *Instance, abort func(error) error, err error) {
	if err := spec.Validate(); err != nil {
		return nil, nil, err
	}
	if d.jailer != nil {
		return nil, nil, errors.New("firecracker driver: jailer mode needs the kernel, initrd, disk and tap inside the chroot; not supported by Start yet")
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	if err := vmm.RefuseRunning(ctx, d, spec); err != nil {
		return nil, nil, err
	}
	sock := filepath.Join(spec.Dir, SocketFile)
	os.Remove(sock)
	os.Remove(filepath.Join(spec.Dir, PIDFile))

	// The console log is opened here, as root, O_APPEND: the console-log trimmer
	// may truncate it and firecracker goes on writing at its new end.
	// O_NOFOLLOW: the directory is the VM user's, and a symlink there must not
	// send the guest's console into a file of root's.
	logf, err := os.OpenFile(filepath.Join(spec.Dir, ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close()
	// Firecracker runs as the VM's own unprivileged user (as the jailer would
	// make it) in the VM's cgroup; it needs /dev/kvm, so it gets kvm's group.
	sb, err := vmm.PrepareSandbox(spec, true)
	if err != nil {
		return nil, nil, err
	}
	bin, args := d.Command(spec)
	cmd := exec.Command(bin, args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: a Ctrl-C on the daemon's terminal never reaches a VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	sb.Apply(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		sb.Abort()
		return nil, nil, fmt.Errorf("vm %s: start firecracker: %w", spec.ID, err)
	}
	pid := cmd.Process.Pid
	// The pid file at once (L6): a daemon killed from here on leaves a process
	// Adopt finds; before this line, Adopt's /proc scan for the socket finds it.
	pidErr := writePIDFile(filepath.Join(spec.Dir, PIDFile), pid)
	serr := sb.Started(pid)
	proc, err := vmm.OpenProcess(pid, sock)
	if err != nil {
		os.Remove(filepath.Join(spec.Dir, PIDFile))
		cmd.Process.Kill()
		werr := cmd.Wait() // reap it, and say how it ended
		sb.Abort()
		return nil, nil, fmt.Errorf("vm %s: firecracker exited at once (%v): %s", spec.ID, werr, lastLine(filepath.Join(spec.Dir, ConsoleLog)))
	}
	cmd.Process.Release() // reaped through the pidfd (Wait), not exec.Cmd
	inst = &Instance{Process: proc, api: newAPIClient(sock)}
	abort = func(err error) error {
		inst.Kill()
		inst.Process.Wait(context.Background())
		inst.Close()
		sb.Abort()
		os.Remove(sock)
		os.Remove(filepath.Join(spec.Dir, PIDFile))
		return fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	if serr != nil {
		return nil, nil, abort(serr)
	}
	if pidErr != nil {
		return nil, nil, abort(pidErr)
	}
	if err := waitSocket(ctx, sock, proc); err != nil {
		return nil, nil, abort(err)
	}
	return inst, abort, nil
}

// writePIDFile writes a new pid file, never through a symlink (the directory is
// the VM user's).
func writePIDFile(path string, pid int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// configure sends the microVM's configuration in the order Firecracker's
// getting-started guide uses, then starts it.
func configure(ctx context.Context, api *apiClient, spec vmm.Spec) error {
	// boot_args replaces Firecracker's default command line entirely: spec's
	// carries console=ttyS0 reboot=k panic=1 and the guest's ip= itself.
	if err := api.do(ctx, "PUT", "/boot-source", bootSource{
		KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: spec.BootArgs,
	}, nil); err != nil {
		return err
	}
	// Firecracker makes the root drive /dev/vda and the others follow in the
	// order they are configured; it appends pci=off root=/dev/vda ro|rw to
	// boot_args (see the stand-in's drives.go for where in its source).
	for i, d := range spec.Drives {
		if err := api.do(ctx, "PUT", "/drives/"+d.ID, drive{
			DriveID: d.ID, PathOnHost: d.Path, IsRootDevice: i == 0, IsReadOnly: d.ReadOnly,
		}, nil); err != nil {
			return err
		}
	}
	if err := api.do(ctx, "PUT", "/machine-config", machineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB, TrackDirtyPages: true}, nil); err != nil {
		return err
	}
	if spec.TapDevice != "" {
		if err := api.do(ctx, "PUT", "/network-interfaces/eth0", networkInterface{
			IfaceID: "eth0", HostDevName: spec.TapDevice, GuestMAC: spec.MAC,
		}, nil); err != nil {
			return err
		}
	}
	return api.do(ctx, "PUT", "/actions", action{ActionType: "InstanceStart"}, nil)
}

// waitSocket waits (bounded) until firecracker accepts connections on sock.
func waitSocket(ctx context.Context, sock string, proc *vmm.Process) error {
	deadline := time.Now().Add(socketWait)
	poll := time.Millisecond // often at first, less once it is slow
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		if !proc.Running() {
			return fmt.Errorf("firecracker exited before opening its API socket: %s", lastLine(filepath.Join(filepath.Dir(sock), ConsoleLog)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("firecracker API socket %s did not appear within %s", sock, socketWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}

// Adopt implements vmm.Driver: the pid file (or, without one, a scan of /proc)
// names the process, and its command line must name this VM's socket. A
// process found that way whose API does not answer, or whose socket is gone, is
// alive: Adopt returns a *vmm.UnresponsiveError holding it, never ErrNotRunning.
func (d *Driver) Adopt(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	sock := filepath.Join(spec.Dir, SocketFile)
	proc, err := vmm.Find(filepath.Join(spec.Dir, PIDFile), sock)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Process: proc, api: newAPIClient(sock)}
	if _, err := inst.Info(ctx); err != nil {
		return nil, &vmm.UnresponsiveError{Instance: &vmm.Stray{Process: proc}, Err: fmt.Errorf("api %s: %w", sock, err)}
	}
	return inst, nil
}

// Instance is a running Firecracker.
type Instance struct {
	*vmm.Process
	api *apiClient
	// restored: the guest was loaded from spec.MemoryFile by this process,
	// which tracks the pages it dirtied since; its suspend can be a Diff
	// snapshot on top of that file.
	restored bool
}

var _ vmm.Instance = (*Instance)(nil)

// Shutdown sends Ctrl-Alt-Del; the guest init stops, syncs and reboots, and with
// reboot=k the reboot ends the Firecracker process.
func (i *Instance) Shutdown(ctx context.Context) error {
	return i.api.do(ctx, "PUT", "/actions", action{ActionType: "SendCtrlAltDel"}, nil)
}

// Info returns GET /.
func (i *Instance) Info(ctx context.Context) (*InstanceInfo, error) {
	var info InstanceInfo
	return &info, i.api.do(ctx, "GET", "/", nil, &info)
}

// Wait implements vmm.Instance; once firecracker has exited its cgroup is removed.
func (i *Instance) Wait(ctx context.Context) error {
	group := cgroup.Of(i.PID())
	if err := i.Process.Wait(ctx); err != nil {
		return err
	}
	return vmm.RemoveCgroup(i.Process, group)
}

// Kill implements vmm.Instance.
func (i *Instance) Kill() error { return i.Signal(syscall.SIGKILL) }
