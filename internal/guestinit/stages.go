package guestinit

import (
	"bufio"
	"io"
	"log"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// stage logs a boot stage with the time since the kernel started
// (CLOCK_BOOTTIME), on the console: "fcm-init: boot 1.234s network". The
// initrd logs its stages the same way, so a console log tells where a boot's
// time went (the bench reads it).
func stage(name string) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return
	}
	log.Printf("boot %.3fs %s", float64(ts.Nano())/1e9, name)
}

// watchSSHD copies sshd's log to the console and logs the stage "sshd
// listening" at its "Server listening on" line: no polling and no connection
// (which would make sshd fork and exec a session process mid-boot).
func watchSSHD(r io.ReadCloser) {
	defer r.Close()
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console, _ = os.OpenFile("/dev/null", os.O_WRONLY, 0)
	}
	defer console.Close()
	sc := bufio.NewScanner(r)
	seen := false
	for sc.Scan() {
		console.Write(append(sc.Bytes(), '\n'))
		if !seen && strings.HasPrefix(sc.Text(), "Server listening on") {
			seen = true
			stage("sshd listening")
		}
	}
}
