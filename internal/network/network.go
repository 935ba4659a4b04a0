// Package network sets up the host side of fcm's VM networking: a Linux bridge
// holding the guests' gateway address, one persistent tap per VM attached to
// it, IPv4 forwarding, and an nftables table "fcm" (family inet) that
// masquerades the guests' traffic leaving the host, drops packets from guests
// whose source address is not a known VM address (anti-spoofing), and keeps
// guests away from protected host TCP ports (the fcm API, SSH, Caddy admin).
//
// Every function acts on the network namespace of the calling process.
package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
)

// Config describes the host's VM network.
type Config struct {
	// Bridge is the name of the bridge the taps are attached to, e.g. "fcm0".
	Bridge string
	// Subnet is the guests' IPv4 subnet, e.g. 172.16.0.0/24. The bridge holds
	// its first host address (see Gateway).
	Subnet netip.Prefix
	// ProtectPorts are host TCP ports guests must not reach on any host
	// address, e.g. 7777 (the fcm API), 22 (SSH) and 2019 (Caddy admin).
	ProtectPorts []uint16
}

// Gateway returns the bridge's address: the first host address of Subnet
// (172.16.0.1 for 172.16.0.0/24).
func (c Config) Gateway() netip.Addr {
	return c.Subnet.Masked().Addr().Next()
}

// Validate reports whether c is usable: an IPv4 subnet with a prefix length
// from 16 to 29, a valid interface name for the bridge, and non-zero ports.
func (c Config) Validate() error {
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if !c.Subnet.IsValid() {
		return errors.New("subnet is not set")
	}
	if !c.Subnet.Addr().Is4() {
		return fmt.Errorf("subnet %s: only IPv4 subnets are supported", c.Subnet)
	}
	if b := c.Subnet.Bits(); b < 16 || b > 29 {
		return fmt.Errorf("subnet %s: prefix length must be between /16 and /29, not /%d", c.Subnet, b)
	}
	for _, p := range c.ProtectPorts {
		if p == 0 {
			return errors.New("protected port 0 is not a valid TCP port")
		}
	}
	return nil
}

// validIfName checks a Linux interface name: 1 to 15 characters from
// [a-zA-Z0-9_.-], and not "." or "..".
func validIfName(name string) error {
	if name == "" {
		return errors.New("interface name is empty")
	}
	if len(name) > 15 {
		return fmt.Errorf("interface name %q is longer than 15 characters", name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("interface name %q is not allowed", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-'
		if !ok {
			return fmt.Errorf("interface name %q has invalid character %q (allowed: a-z A-Z 0-9 _ . -)", name, r)
		}
	}
	return nil
}

// Host is the host's VM network as set up by Setup. Its methods are safe for
// concurrent use.
type Host struct {
	cfg Config
	mu  sync.Mutex // serialises tap and set changes
}

// ipForwardPath is the sysctl Setup turns on, for the current network namespace.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Setup makes the bridge cfg.Bridge (or finds it) with the gateway address,
// leaving any other addresses on it alone, brings it up, turns on IPv4
// forwarding and atomically replaces the nftables table "fcm", keeping the
// VM addresses already in its set. It is idempotent: a restarted daemon calls
// it again over the existing state and gets the same result.
func Setup(ctx context.Context, cfg Config) (*Host, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if err := ensureBridge(cfg); err != nil {
		return nil, err
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("enable ipv4 forwarding: %w", err)
	}
	if err := writeTable(cfg); err != nil {
		return nil, err
	}
	return &Host{cfg: cfg}, nil
}

// AddVM creates the persistent tap device tap (or reuses an existing one),
// attaches it to the bridge, brings it up and adds ip to the set of VM
// addresses allowed to send through the host. Calling it again for the same
// VM is harmless.
func (h *Host) AddVM(ctx context.Context, tap string, ip netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validIfName(tap); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	if err := h.checkAddr(ip); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := ensureTap(h.cfg.Bridge, tap); err != nil {
		return err
	}
	if err := addElement(ip); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	return nil
}

// RemoveVM deletes the tap device tap and removes ip from the set of VM
// addresses. A missing tap or address is not an error; an invalid (zero) ip
// skips the set, for cleaning up a tap whose address is unknown, and an empty
// tap skips the link, for an element whose tap is unknown.
func (h *Host) RemoveVM(ctx context.Context, tap string, ip netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if tap != "" {
		if err := validIfName(tap); err != nil {
			return fmt.Errorf("tap: %w", err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if tap != "" {
		if err := deleteTap(tap); err != nil {
			return err
		}
	}
	if !ip.IsValid() {
		return nil
	}
	if err := deleteElement(ip); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	return nil
}

// TapNames lists the links whose names start with "tap_", attached to the
// bridge or not, sorted, so the daemon can find taps leaked by a crash.
func (h *Host) TapNames() ([]string, error) {
	return tapNames()
}

// VMAddrs lists the addresses in the nftables set of VM addresses, sorted.
func (h *Host) VMAddrs() ([]netip.Addr, error) {
	return vmAddrs()
}

// Teardown deletes the nftables table "fcm" and the bridge cfg.Bridge. What
// is already gone is not an error. Taps still attached to the bridge are
// detached, not deleted, and IPv4 forwarding is left on.
func Teardown(ctx context.Context, cfg Config) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validIfName(cfg.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if err := deleteTable(); err != nil {
		return err
	}
	return deleteBridge(cfg.Bridge)
}

// checkAddr verifies ip is a guest address: IPv4, inside the subnet, and
// neither the network address nor the gateway.
func (h *Host) checkAddr(ip netip.Addr) error {
	switch {
	case !ip.IsValid():
		return errors.New("no vm address given")
	case !ip.Is4():
		return fmt.Errorf("vm address %s is not IPv4", ip)
	case !h.cfg.Subnet.Contains(ip):
		return fmt.Errorf("vm address %s is outside subnet %s", ip, h.cfg.Subnet)
	case ip == h.cfg.Subnet.Addr() || ip == h.cfg.Gateway():
		return fmt.Errorf("vm address %s is reserved in subnet %s", ip, h.cfg.Subnet)
	}
	return nil
}
