package guestinit

import (
	"fmt"
	"log"
	"os"
	"strings"
	"time"

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

// reportListening logs the stage "sshd listening" once sshd listens (or
// gives up after a minute). It reads the kernel's socket tables instead of
// connecting: a connection would make sshd fork and exec a session process,
// costing the boot the very time it measures.
func reportListening() {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if listening(22) {
			stage("sshd listening")
			return
		}
	}
}

// listening reports whether a TCP socket listens on port (IPv4 or IPv6).
func listening(port int) bool {
	want := fmt.Sprintf(":%04X ", port)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			// sl local_address rem_address st ...: state 0A is LISTEN.
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1]+" ", want) && f[3] == "0A" {
				return true
			}
		}
	}
	return false
}
