package guestinit

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// swapMiB reads fcm.swap=<MiB> from the kernel command line.
func swapMiB(cmdline string) int {
	for _, arg := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(arg, "fcm.swap="); ok {
			n, err := strconv.Atoi(v)
			if err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// makeSwapFile allocates path (no holes, as swapon requires) and writes a swap
// header, what mkswap does, so the image needs no swap file of its own.
func makeSwapFile(path string, mib int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	size := int64(mib) << 20
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("fallocate: %w", err)
	}
	if _, err := f.WriteAt(swapHeader(size), 0); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// swapHeader is the first page of a version-1 Linux swap area.
func swapHeader(size int64) []byte {
	const page = 4096
	h := make([]byte, page)
	binary.LittleEndian.PutUint32(h[1024:], 1)                   // version
	binary.LittleEndian.PutUint32(h[1028:], uint32(size/page-1)) // last_page
	rand.Read(h[1036:1052])                                      // uuid
	copy(h[page-10:], "SWAPSPACE2")
	return h
}

func swapon(path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		return errno
	}
	return nil
}

func swapoff(path string) {
	if p, err := unix.BytePtrFromString(path); err == nil {
		unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(p)), 0, 0)
	}
}
