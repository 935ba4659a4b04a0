package main

import (
	"path/filepath"
	"slices"

	"github.com/fcmhost/fcm/internal/guestinit"
)

// guestInit runs fcm as a VM's init (it does not return).
func guestInit() { guestinit.Main() }

// guestPower runs fcm as a guest's poweroff, halt or reboot (the image links
// them to fcm-init); ok is false for any other name.
func guestPower(args []string) (code int, ok bool) {
	if !slices.Contains(guestinit.PowerCommands, filepath.Base(args[0])) {
		return 0, false
	}
	return guestinit.PowerMain(args[0], args[1:]), true
}
