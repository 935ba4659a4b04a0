// Package guestinit is the guest's /sbin/init: the fcm binary runs it when it is
// process 1 inside a VM. It mounts the pseudo filesystems, sets the hostname and
// eth0 from the kernel command line's ip= (the kernel has no IP autoconfiguration),
// enables a swap file, starts sshd and a placeholder web page on port 3000, reaps
// orphans, and on Ctrl-Alt-Del or the ACPI power button stops everything cleanly
// and reboots, which ends the VMM (Firecracker with reboot=k, QEMU with -no-reboot).
package guestinit

import (
	"fmt"
	"net"
	"strings"
)

// Config is what init takes from the kernel command line.
type Config struct {
	Address  net.IP     // the VM's address
	Gateway  net.IP     // default route
	Mask     net.IPMask // netmask of Address
	Hostname string
	Device   string   // network interface, eth0 unless ip= says otherwise
	DNS      []net.IP // ip= fields 8 and 9, when given
}

// ParseCmdline reads the kernel's ip= syntax,
// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>,
// from a whole command line. A line without ip= gives an empty Config (no network
// configured, hostname left alone); a malformed ip= is an error.
func ParseCmdline(cmdline string) (Config, error) {
	var c Config
	for _, arg := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(arg, "ip=")
		if !ok {
			continue
		}
		f := strings.Split(v, ":")
		for len(f) < 9 {
			f = append(f, "")
		}
		if c.Address = net.ParseIP(f[0]).To4(); c.Address == nil {
			return Config{}, fmt.Errorf("ip=%s: bad client address %q", v, f[0])
		}
		if f[2] != "" {
			if c.Gateway = net.ParseIP(f[2]).To4(); c.Gateway == nil {
				return Config{}, fmt.Errorf("ip=%s: bad gateway %q", v, f[2])
			}
		}
		c.Mask = net.CIDRMask(24, 32)
		if f[3] != "" {
			m := net.ParseIP(f[3]).To4()
			if m == nil {
				return Config{}, fmt.Errorf("ip=%s: bad netmask %q", v, f[3])
			}
			if ones, bits := net.IPMask(m).Size(); ones == 0 && bits == 0 {
				return Config{}, fmt.Errorf("ip=%s: netmask %q is not contiguous", v, f[3])
			}
			c.Mask = net.IPMask(m)
		}
		c.Hostname = f[4]
		if c.Hostname != "" && !validHostname(c.Hostname) {
			return Config{}, fmt.Errorf("ip=%s: bad hostname %q", v, f[4])
		}
		c.Device = f[5]
		if c.Device == "" {
			c.Device = "eth0"
		}
		for _, d := range f[7:9] {
			if d == "" {
				continue
			}
			ip := net.ParseIP(d)
			if ip == nil {
				return Config{}, fmt.Errorf("ip=%s: bad DNS server %q", v, d)
			}
			c.DNS = append(c.DNS, ip)
		}
	}
	return c, nil
}

// validHostname accepts a DNS label: a-z, 0-9 and inner hyphens, 1-63 characters.
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 63 || h[0] == '-' || h[len(h)-1] == '-' {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}
