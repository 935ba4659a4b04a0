//go:build !linux

package main

// guestInit is nothing off Linux: VMs' init is a Linux build.
func guestInit() {}

// guestPower is nothing off Linux.
func guestPower([]string) (int, bool) { return 0, false }
