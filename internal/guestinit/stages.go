package guestinit

import (
	"log"
	"net"
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

// reportListening logs the stage "sshd listening" once sshd accepts
// connections (or gives up after a minute).
func reportListening() {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:22", time.Second); err == nil {
			c.Close()
			stage("sshd listening")
			return
		}
	}
}
