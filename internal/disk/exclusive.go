package disk

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP (linux/fiemap.h): the ioctl, its flags, and the sizes of its
// structures.
const (
	fsIocFiemap        = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
	fiemapHeader       = 32 // struct fiemap without its extents
	fiemapExtentSize   = 56 // struct fiemap_extent
	fiemapBatch        = 256
)

// Exclusive reports how many bytes of path's are in extents no other file
// shares (FIEMAP without FIEMAP_EXTENT_SHARED): what removing it would give
// back. A reflinked copy holds none until one of the two is written. On a
// filesystem that cannot share extents it is what the file takes.
func Exclusive(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, fiemapHeader+fiemapBatch*fiemapExtentSize)
	var total int64
	var start uint64
	for {
		clear(buf)
		ne := (*[4]uint64)(unsafe.Pointer(&buf[0]))
		ne[0], ne[1] = start, ^uint64(0) // fm_start, fm_length
		*(*uint32)(unsafe.Pointer(&buf[16])) = fiemapFlagSync
		*(*uint32)(unsafe.Pointer(&buf[24])) = fiemapBatch // fm_extent_count
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return 0, fmt.Errorf("fiemap %s: %w", path, errno)
		}
		mapped := *(*uint32)(unsafe.Pointer(&buf[20]))
		if mapped == 0 {
			return total, nil
		}
		for i := 0; i < int(mapped); i++ {
			e := buf[fiemapHeader+i*fiemapExtentSize:]
			logical := *(*uint64)(unsafe.Pointer(&e[0]))
			length := *(*uint64)(unsafe.Pointer(&e[16]))
			flags := *(*uint32)(unsafe.Pointer(&e[40]))
			if flags&fiemapExtentShared == 0 {
				total += int64(length)
			}
			start = logical + length
			if flags&fiemapExtentLast != 0 {
				return total, nil
			}
		}
	}
}
