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
	// Overlay says the root is the shared base with the VM's own disk over it,
	// which the initrd finds by label (every VM made now). Without it the root
	// is the one disk /dev/vda, with a swap file of SwapMiB (VMs made before).
	Overlay bool
	SwapMiB int // size of /swapfile, made by the guest init on first boot; 0 for none
}

// BootArgs returns the whole kernel command line for an fcm guest. It replaces the
// hypervisor's default line (Firecracker's boot_args do), so it carries the
// console, reboot=k (a guest reboot ends Firecracker), panic=1, the root disk and
// the ip= that fcm-init reads.
func BootArgs(b Boot) string {
	root := "root=/dev/vda rw"
	if b.Overlay {
		root = "fcm.root=overlay"
	}
	mask := net.IP(b.Mask).String()
	s := fmt.Sprintf("console=ttyS0 reboot=k panic=1 pci=off quiet %s ip=%s::%s:%s:%s:eth0:off",
		root, b.Address, b.Gateway, mask, b.Hostname)
	if b.SwapMiB > 0 && !b.Overlay {
		s += fmt.Sprintf(" fcm.swap=%d", b.SwapMiB)
	}
	return s
}
