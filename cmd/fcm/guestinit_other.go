//go:build !linux

package main

// guestInit is nothing off Linux: VMs' init is a Linux build.
func guestInit() {}
