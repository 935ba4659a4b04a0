package guest

import (
	"fmt"
	"net"
)

// Boot describes the guest side of a VM's kernel command line.
type Boot struct {
	Address  net.IP
	Gateway  net.IP
	Mask     net.IPMask
	Hostname string
	SwapMiB  int // size of /swapfile, made by the guest init on first boot; 0 for none
}

// BootArgs returns the whole kernel command line for an fcm guest. It replaces the
// hypervisor's default line (Firecracker's boot_args do), so it carries the
// console, reboot=k (a guest reboot ends Firecracker), panic=1, the root disk and
// the ip= that fcm-init reads.
func BootArgs(b Boot) string {
	mask := net.IP(b.Mask).String()
	s := fmt.Sprintf("console=ttyS0 reboot=k panic=1 pci=off quiet root=/dev/vda rw ip=%s::%s:%s:%s:eth0:off",
		b.Address, b.Gateway, mask, b.Hostname)
	if b.SwapMiB > 0 {
		s += fmt.Sprintf(" fcm.swap=%d", b.SwapMiB)
	}
	return s
}
