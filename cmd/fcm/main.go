// Command fcm turns a Linux host into a small Heroku of Firecracker microVMs. The
// same binary is the daemon, the CLI, and, inside each VM, the guest's init.
package main

import (
	"os"
	"strings"

	"github.com/fcmhost/fcm/internal/cli"
)

func main() {
	if os.Getpid() == 1 {
		cmdline, _ := os.ReadFile("/proc/cmdline") // not mounted yet in a VM; maybe in a container
		if isGuestInit(os.Args[0], string(cmdline)) {
			guestInit() // we are /sbin/init inside a VM
		}
	}
	if code, ok := guestPower(os.Args); ok {
		os.Exit(code) // we are poweroff, halt or reboot inside a VM
	}
	os.Exit(cli.Main(os.Args[1:]))
}

// isGuestInit reports whether process 1 is an fcm VM's init: started as
// the image's init (the kernel and the initrd's switch_root run /sbin/init),
// or on a kernel command line with fcm's own fcm.* parameters. Process 1 in
// a container or under unshare --pid runs the CLI instead of mounting and
// rebooting.
func isGuestInit(argv0, cmdline string) bool {
	switch argv0 {
	case "/sbin/init", "/usr/sbin/init", "/sbin/fcm-init", "/usr/sbin/fcm-init":
		return true
	}
	for _, arg := range strings.Fields(cmdline) {
		if strings.HasPrefix(arg, "fcm.") {
			return true
		}
	}
	return false
}
