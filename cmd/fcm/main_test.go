package main

import "testing"

func TestIsGuestInit(t *testing.T) {
	vmLine := "console=ttyS0 reboot=k panic=1 pci=off quiet root=/dev/vda rw ip=172.16.0.50::172.16.0.1:255.255.255.0:web1:eth0:off"
	for _, tc := range []struct {
		argv0, cmdline string
		want           bool
	}{
		{"/sbin/init", "", true}, // the kernel or switch_root, /proc not mounted yet
		{"/usr/sbin/fcm-init", "", true},
		{"fcm", vmLine + " fcm.swap=512", true},
		{"fcm", vmLine, false},
		{"/usr/local/bin/fcm", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet", false}, // a container entrypoint
		{"fcm", "", false}, // unshare --pid --fork fcm
		{"./sbin/init", "", false},
		{"fcm", "quiet nofcm.swap=1", false},
	} {
		if got := isGuestInit(tc.argv0, tc.cmdline); got != tc.want {
			t.Errorf("isGuestInit(%q, %q) = %v, want %v", tc.argv0, tc.cmdline, got, tc.want)
		}
	}
}
