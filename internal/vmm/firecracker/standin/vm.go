package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

const (
	qemuBinary = "qemu-system-x86_64"
	startGrace = 300 * time.Millisecond // a QEMU that exits within this failed to start
)

// vmProcess is the QEMU that runs the microVM.
type vmProcess struct {
	cmd     *exec.Cmd
	qmpSock string        // for SendCtrlAltDel
	events  net.Conn      // a second QMP monitor, ours alone (see watch)
	r       *bufio.Reader // events, read
	done    chan struct{} // closed once QEMU has exited and been reaped
	stderr  tail
}

// vmSpec turns the configuration into the spec qemu.MachineArgs takes, refusing
// what the stand-in cannot boot rather than ignoring it.
func (a *api) vmSpec() (vmm.Spec, error) {
	if a.boot == nil {
		return vmm.Spec{}, errors.New(msgNoKernel)
	}
	id := a.id
	if id == "" {
		id = "standin"
	}
	cmdline, err := a.kernelCmdline()
	if err != nil {
		return vmm.Spec{}, err
	}
	drives, err := a.specDrives()
	if err != nil {
		return vmm.Spec{}, err
	}
	spec := vmm.Spec{
		ID: id, Dir: filepath.Dir(a.sock),
		Kernel: a.boot.KernelImagePath, BootArgs: cmdline, Drives: drives,
		VCPUs: a.machine.VCPUCount, MemoryMiB: a.machine.MemSizeMiB,
	}
	if a.boot.InitrdPath != nil {
		spec.Initrd = *a.boot.InitrdPath
	}
	// Without a root device Firecracker boots all the same (an initrd may be
	// the root), only with no root= on the command line.
	for _, n := range a.ifaces {
		if n.IfaceID != "eth0" {
			return spec, fmt.Errorf("Network interface %s: the fcm stand-in supports eth0 only", n.IfaceID)
		}
		spec.TapDevice = n.HostDevName
		if n.GuestMAC != nil {
			spec.MAC = *n.GuestMAC
		} else {
			// Firecracker leaves the MAC to the guest; QEMU needs one: a local unicast.
			b := make([]byte, 4)
			rand.Read(b)
			spec.MAC = net.HardwareAddr(append([]byte{0x06, 0x00}, b...)).String()
		}
	}
	return spec, nil
}

// start boots the configured microVM with QEMU in the foreground: the guest's
// serial console is QEMU's stdio, which is ours.
func (a *api) start() error {
	spec, err := a.vmSpec()
	if err != nil {
		return err
	}
	// Guest RAM is a memory backend named as a restored VM's is (see
	// load), so that a snapshot of either loads into the other.
	accel := probeAccel()
	args := withMemory(reportDiskErrors(qemu.MachineArgs(spec, accel, qemu.HostTSCKHz())),
		fmt.Sprintf("memory-backend-ram,id=%s,size=%dM", memBackend, spec.MemoryMiB))
	vm, err := a.spawn("InstanceStart", args, true)
	if err != nil {
		return fmt.Errorf("Failed to start the microVM: %v", err)
	}
	a.vmspec, a.accel = spec, accel
	a.run(vm)
	return nil
}

// probeAccel is the accelerator QEMU runs the guest with (KVM or TCG).
func probeAccel() qemu.Accel {
	accel, why := qemu.ProbeAccel()
	logf("accelerator %s (%s)", accel, why)
	return accel
}

// memBackend is the id of the guest's RAM backend, which names its RAM block
// in QEMU's migration stream.
const memBackend = "mem"

// withMemory puts guest RAM in the memory backend object obj (whose id is
// memBackend), replacing one MachineArgs may have given.
func withMemory(args []string, obj string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "-object" && i+1 < len(args) && strings.HasPrefix(args[i+1], "memory-backend-"):
			i++
			continue
		case i > 0 && args[i-1] == "-machine" && !strings.Contains(args[i], "memory-backend="):
			out = append(out, args[i]+",memory-backend="+memBackend, "-object", obj)
			continue
		case i > 0 && args[i-1] == "-machine":
			out = append(out, args[i], "-object", obj)
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// spawn runs QEMU with the machine args plus the stand-in's console, QMP
// sockets and -S, and returns once its event monitor has answered (and, when
// runGuest, once the guest runs and QEMU has lived startGrace). An error says
// how QEMU ended. what names the operation in the log.
func (a *api) spawn(what string, machine []string, runGuest bool) (*vmProcess, error) {
	// The event monitor is one end of a socket pair, QEMU's fd 3: no path, and
	// connected before the guest runs (-S, until the handshake says "cont").
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "qmp-events"), os.NewFile(uintptr(fds[1]), "qmp-events-qemu")
	defer theirs.Close()
	events, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, err
	}
	vm := &vmProcess{qmpSock: a.sock + ".qmp", events: events, done: make(chan struct{})}
	args := append(machine,
		"-serial", "stdio",
		"-qmp", "unix:"+strings.ReplaceAll(vm.qmpSock, ",", ",,")+",server=on,wait=off",
		// A guest power-off stops emulation but not the process, as on Firecracker.
		// -no-reboot would now pause a rebooting guest too: watch ends QEMU then.
		"-no-shutdown",
		"-chardev", "socket,id=fcmevents,fd=3", "-mon", "chardev=fcmevents,mode=control",
		"-S",
	)
	logf("%s: %s %s", what, qemuBinary, strings.Join(args, " "))
	os.Remove(vm.qmpSock)
	vm.cmd = exec.Command(qemuBinary, args...)
	vm.cmd.Stdin, vm.cmd.Stdout = os.Stdin, os.Stdout
	vm.cmd.Stderr = io.MultiWriter(os.Stderr, &vm.stderr)
	vm.cmd.ExtraFiles = []*os.File{theirs}
	// QEMU never outlives the stand-in, even a killed one.
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked ends: keep it until QEMU has.
		runtime.LockOSThread()
		if err := vm.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		vm.cmd.Wait()
		close(vm.done)
	}()
	if err := <-started; err != nil {
		events.Close()
		return nil, fmt.Errorf("%s: %v", qemuBinary, err)
	}
	theirs.Close()
	r, err := vm.handshake(runGuest)
	if err != nil {
		select {
		case <-vm.done: // it exited by itself: its stderr says why
			err = nil
		case <-time.After(time.Second):
		}
		return nil, vm.failed(err)
	}
	vm.r = r
	if runGuest {
		select {
		case <-vm.done:
			return nil, vm.failed(nil)
		case <-time.After(startGrace):
		}
	}
	return vm, nil
}

// failed reaps a QEMU that did not start (killing it if it is still there)
// and says how it ended.
func (vm *vmProcess) failed(why error) error {
	vm.kill()
	vm.events.Close()
	state := fmt.Sprint(vm.cmd.ProcessState)
	if why != nil {
		state += "; " + why.Error()
	}
	return fmt.Errorf("%s exited (%s): %s", qemuBinary, state, strings.TrimSpace(vm.stderr.String()))
}

// run makes vm the microVM: its events are watched, and its end ends the
// stand-in, as the end of Firecracker's guest ends Firecracker.
func (a *api) run(vm *vmProcess) {
	a.started, a.vm = true, vm
	go vm.watch(vm.r)
	go func() {
		<-vm.done
		logf("%s exited (%v): the microVM has ended", qemuBinary, vm.cmd.ProcessState)
		a.exit(0)
	}()
}

// reportDiskErrors makes QEMU's disks fail a guest's request on a host I/O
// error, as Firecracker's virtio-blk does (the guest gets VIRTIO_BLK_S_IOERR),
// where QEMU's default pauses the guest when the host's disk is full
// (werror=enospc).
func reportDiskErrors(args []string) []string {
	out := append([]string(nil), args...)
	for i := 1; i < len(out); i++ {
		if out[i-1] == "-drive" {
			out[i] += ",werror=report,rerror=report"
		}
	}
	return out
}

// qmpMessage is a QMP greeting, reply or event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Desc string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
	Data  struct {
		Reason string `json:"reason"`
	} `json:"data"`
}

// handshake reads the event monitor's greeting, enables commands and, when
// runGuest, lets the guest run. An error means QEMU did not start (or has
// already exited).
func (vm *vmProcess) handshake(runGuest bool) (*bufio.Reader, error) {
	vm.events.SetDeadline(time.Now().Add(30 * time.Second))
	defer vm.events.SetDeadline(time.Time{})
	r := bufio.NewReader(vm.events)
	if _, err := readQMP(r, false); err != nil {
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	cmds := []string{"qmp_capabilities"}
	if runGuest {
		cmds = append(cmds, "cont")
	}
	for _, cmd := range cmds {
		if _, err := fmt.Fprintf(vm.events, `{"execute":%q}`+"\n", cmd); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		if _, err := readQMP(r, true); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
	}
	return r, nil
}

// readQMP returns the next message that is not an event (a greeting or reply).
func readQMP(r *bufio.Reader, reply bool) (*qmpMessage, error) {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("bad QMP message %q: %w", line, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return nil, errors.New(m.Error.Desc)
		case reply && m.Return == nil, !reply && m.QMP == nil:
			return nil, fmt.Errorf("unexpected QMP message %q", line)
		}
		return &m, nil
	}
}

// watch ends QEMU when the guest reboots. -no-reboot turns a reboot into a
// shutdown and -no-shutdown turns that into a pause, so QEMU would stay; but
// Firecracker's process ends when its guest reboots. A power-off (reason
// guest-shutdown) leaves QEMU paused and running, as Firecracker on x86 stays.
func (vm *vmProcess) watch(r *bufio.Reader) {
	defer vm.events.Close()
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return // QEMU has exited
		}
		var m qmpMessage
		if json.Unmarshal(line, &m) != nil || m.Event != "SHUTDOWN" {
			continue
		}
		logf("QEMU event SHUTDOWN, reason %s", m.Data.Reason)
		if m.Data.Reason == "guest-reset" {
			fmt.Fprintf(vm.events, `{"execute":"quit"}`+"\n")
		}
	}
}

// ctrlAltDel presses Ctrl-Alt-Del on the guest's i8042 keyboard through QMP.
func (vm *vmProcess) ctrlAltDel() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
	}
	if err := qemu.QMP(ctx, vm.qmpSock, "send-key", map[string]any{"keys": keys}, nil); err != nil {
		return fmt.Errorf("SendCtrlAltDel failed: %v", err)
	}
	return nil
}

// kill ends QEMU and waits (bounded) until it is reaped.
func (vm *vmProcess) kill() {
	vm.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-vm.done:
	case <-time.After(5 * time.Second):
	}
	os.Remove(vm.qmpSock)
}

// tail keeps the last 64 KiB written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if n := len(t.buf) - 64<<10; n > 0 {
		t.buf = t.buf[n:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
