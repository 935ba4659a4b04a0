// Command fcm turns a Linux host into a small Heroku of Firecracker microVMs. The
// same binary is the daemon, the CLI, and, inside each VM, the guest's init.
package main

import (
	"os"

	"github.com/fcmhost/fcm/internal/cli"
	"github.com/fcmhost/fcm/internal/guestinit"
)

func main() {
	if os.Getpid() == 1 {
		guestinit.Main() // we are /sbin/init inside a VM
	}
	os.Exit(cli.Main(os.Args[1:]))
}
