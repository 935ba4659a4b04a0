package guestinit

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const (
	evKey    = 1   // EV_KEY
	keyPower = 116 // KEY_POWER
)

// watchPowerButton reads the input devices (the ACPI power button appears as one
// once the initrd has loaded "button" and "evdev") and turns a press of KEY_POWER
// into SIGPWR to init, which shuts down as for Ctrl-Alt-Del.
func watchPowerButton() {
	var devs []string
	for i := 0; i < 50 && len(devs) == 0; i++ {
		devs, _ = filepath.Glob("/dev/input/event*")
		if len(devs) == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, d := range devs {
		go func(path string) {
			f, err := os.Open(path)
			if err != nil {
				return
			}
			defer f.Close()
			// struct input_event on 64-bit: timeval (16 bytes), type u16, code u16, value s32.
			buf := make([]byte, 24)
			for {
				if _, err := f.Read(buf); err != nil {
					return
				}
				typ := binary.LittleEndian.Uint16(buf[16:])
				code := binary.LittleEndian.Uint16(buf[18:])
				value := int32(binary.LittleEndian.Uint32(buf[20:]))
				if typ == evKey && code == keyPower && value == 1 {
					unix.Kill(1, unix.SIGPWR)
				}
			}
		}(d)
	}
}
