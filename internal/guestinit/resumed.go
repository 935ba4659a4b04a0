package guestinit

import (
	"encoding/binary"
	"fmt"
	"log"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Resumed puts a guest right after its VM was woken from a suspend (the
// daemon runs `fcm guest resumed` over SSH): the wall clock, which stood still
// while it slept, is set to the host's (hostTime, taken as the command was
// sent), and the host's random bytes are mixed into the kernel's pool, which
// is then reseeded, so the woken guest does not go on from random state it
// had before. It writes a "resumed" stage line on the console.
func Resumed(hostTime time.Time, seed []byte) error {
	was := time.Now()
	tv := unix.NsecToTimeval(hostTime.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	if len(seed) > 0 {
		if err := addEntropy(seed); err != nil {
			return fmt.Errorf("seed the random pool: %w", err)
		}
	}
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err == nil {
		defer console.Close()
		l := log.New(console, "fcm-init: ", 0)
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
		l.Printf("boot %.3fs resumed (the clock moved %s)", float64(ts.Nano())/1e9, hostTime.Sub(was).Round(time.Millisecond))
	}
	return nil
}

// addEntropy credits seed to the kernel's pool (RNDADDENTROPY) and asks for
// a reseed of its generator (RNDRESEEDCRNG).
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return errno
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return errno
	}
	return nil
}
