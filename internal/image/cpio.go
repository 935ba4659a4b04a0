package image

import (
	"fmt"
	"io"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an initramfs.
// Uncompressed: decompressing costs more than reading under software emulation.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdev ...int) {
	if c.err != nil {
		return
	}
	c.ino++
	major, minor := 0, 0
	if len(rdev) == 2 {
		major, minor = rdev[0], rdev[1]
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// Dir, File and Symlink add entries; Close writes the trailer.
func (c *cpioWriter) Dir(name string) { c.entry(name, 0o040755, nil) }
func (c *cpioWriter) File(name string, mode uint32, data []byte) {
	c.entry(name, 0o100000|mode, data)
}
func (c *cpioWriter) CharDev(name string, mode uint32, major, minor int) {
	c.entry(name, 0o020000|mode, nil, major, minor)
}
func (c *cpioWriter) Symlink(name, target string) { c.entry(name, 0o120777, []byte(target)) }
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, nil)
	return c.err
}
