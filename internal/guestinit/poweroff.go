package guestinit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ShutdownMarker starts the console line fcm-init writes (after its
// "fcm-init: " prefix) when the machine goes down: "shutdown: poweroff
// (user defined signal 2)" or "shutdown: reboot (terminated)". The host
// reads it to tell a guest that powered itself off, which stays stopped, or
// rebooted, which is booted again at once, from one that died.
const ShutdownMarker = "shutdown:"

// shutdownKind is what a signal to init asks for: SIGTERM is a reboot (as
// busybox's reboot sends it); the rest (Ctrl-Alt-Del, the power button,
// poweroff and halt) power off.
func shutdownKind(sig os.Signal) string {
	if sig == unix.SIGTERM {
		return "reboot"
	}
	return "poweroff"
}

// PowerCommands are the names the guest image links to fcm-init, which
// PowerMain handles.
var PowerCommands = []string{"poweroff", "halt", "reboot"}

// PowerMain runs fcm as a guest's poweroff, halt or reboot (argv0 names
// which): it asks init to do it (SIGUSR2 for poweroff and halt, SIGTERM for
// reboot) and returns the exit code.
func PowerMain(argv0 string, args []string) int {
	name := filepath.Base(argv0)
	sig := unix.SIGUSR2
	if name == "reboot" {
		sig = unix.SIGTERM
	}
	for _, a := range args {
		if a == "-h" || a == "--help" {
			fmt.Printf("usage: %s\n\n%s the VM: fcm-init stops every process, syncs and unmounts the disks.\n", name, map[bool]string{true: "Reboots", false: "Powers off"}[name == "reboot"])
			if name != "reboot" {
				fmt.Println("The host keeps it stopped (as `fcm stop` would) until `fcm start`.")
			}
			return 0
		}
	}
	if exe, err := os.Readlink("/proc/1/exe"); err != nil || !strings.HasSuffix(exe, "init") {
		fmt.Fprintf(os.Stderr, "%s: process 1 is not fcm's guest init; not signalling it\n", name)
		return 1
	}
	if err := unix.Kill(1, sig); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}
