package qemu

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/fcmhost/fcm/internal/vmm"
)

// Accel is the accelerator QEMU runs guests with.
type Accel string

// The accelerators: KVM when the host can run guests with it, otherwise TCG
// (software emulation: slower, but boots anywhere).
const (
	KVM Accel = "kvm"
	TCG Accel = "tcg"
)

// Files inside the VM directory.
const (
	PIDFile     = "qemu.pid"
	QMPSocket   = "qmp.sock"
	ConsoleLog  = "console.log"
	LogFile     = "qemu.log" // QEMU's own stdout and stderr
	tbSizeMiB   = 64         // TCG translation cache; QEMU's default costs ~110 MiB more
	machineType = "microvm,acpi=on,pit=on,pic=on,rtc=on"
)

// Sandbox is QEMU's seccomp filter: no obsolete system calls, no setuid or
// setsid, no fork or exec, no scheduler or cpu-affinity changes. It needs QEMU
// in the foreground (-daemonize forks and calls setsid).
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// args builds the driver's QEMU command line for spec: the machine in QEMU's
// seccomp sandbox, plus a serial log, QMP socket and pid file in the VM's
// directory.
func args(spec vmm.Spec, accel Accel, tscKHz int) []string {
	return append(MachineArgs(spec, accel, tscKHz),
		"-chardev", "file,id=console,path="+escapeOpt(filepath.Join(spec.Dir, ConsoleLog))+",append=on",
		"-serial", "chardev:console",
		"-qmp", "unix:"+escapeOpt(filepath.Join(spec.Dir, QMPSocket))+",server=on,wait=off",
		"-pidfile", filepath.Join(spec.Dir, PIDFile),
		"-sandbox", Sandbox,
	)
}

// MachineArgs is the part of QEMU's command line that describes the machine of
// spec (CPU, memory, kernel, disk, network, devices), without console or control
// sockets. tscKHz is the host TSC rate, needed under TCG where the microvm machine
// has no timer to calibrate the TSC against.
func MachineArgs(spec vmm.Spec, accel Accel, tscKHz int) []string {
	bootArgs := spec.BootArgs
	if accel == TCG && tscKHz > 0 && !strings.Contains(bootArgs, "tsc_early_khz=") {
		bootArgs += fmt.Sprintf(" tsc_early_khz=%d", tscKHz)
	}
	machine := machineType
	var mem []string
	if spec.MemoryFile != "" {
		// Guest RAM in a file both the guest and the host see (share=on): a
		// suspend saves device state only (x-ignore-shared), and a restore
		// maps the file again, so neither grows with guest memory.
		machine += ",memory-backend=mem"
		mem = []string{"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", spec.MemoryMiB, escapeOpt(spec.MemoryFile))}
	}
	a := []string{
		"-name", "fcm-" + spec.ID,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", machine,
	}
	a = append(a, mem...)
	if accel == KVM {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", fmt.Sprintf("tcg,tb-size=%d", tbSizeMiB), "-cpu", "max")
	}
	a = append(a,
		"-m", fmt.Sprint(spec.MemoryMiB),
		"-smp", fmt.Sprint(spec.VCPUs),
		// A guest reboot ends QEMU, as it ends Firecracker: fcm-init reboots to stop.
		"-no-reboot",
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		a = append(a, "-initrd", spec.Initrd)
	}
	a = append(a, "-append", strings.TrimSpace(bootArgs))
	for _, d := range spec.Drives {
		opts := "id=" + d.ID + ",file=" + escapeOpt(d.Path) + ",format=raw,if=none"
		if d.ReadOnly {
			opts += ",readonly=on"
		} else {
			opts += ",discard=unmap"
		}
		a = append(a, "-drive", opts, "-device", "virtio-blk-device,drive="+d.ID)
	}
	if spec.TapDevice != "" {
		a = append(a,
			"-netdev", "tap,id=net0,ifname="+spec.TapDevice+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+spec.MAC,
		)
	}
	a = append(a,
		"-device", "virtio-rng-device",
		// An i8042 so Ctrl-Alt-Del reaches the guest as on Firecracker.
		"-device", "i8042",
	)
	return a
}

// escapeOpt doubles commas, QEMU's escape inside a -drive or -chardev option value.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
