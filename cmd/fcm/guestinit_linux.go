package main

import "github.com/fcmhost/fcm/internal/guestinit"

// guestInit runs fcm as a VM's init (it does not return).
func guestInit() { guestinit.Main() }
