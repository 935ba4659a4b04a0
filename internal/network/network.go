// Package network sets up the host side of fcm's VM networking and keeps each
// guest in its lane:
//
//   - a Linux bridge holding the guests' gateway address, with IPv6 off, and one
//     persistent tap per VM attached to it as an isolated port (guests do not
//     talk to each other directly unless Config.GuestToGuest);
//   - an nftables table "fcm-l2" (family bridge) that lets a tap send only from
//     its VM's MAC and IPv4 address (ARP included) and drops everything else
//     from guest ports, IPv6 among it; the host's neighbour entry of every VM is
//     pinned;
//   - an nftables table "fcm" (family inet) that masquerades guest traffic
//     leaving the host, lets guests open connections to the host only on an
//     allow-list of TCP ports (Config.HostPorts) plus ping, and forwards guest
//     traffic to the internet but not to link-local, private, CGNAT, multicast
//     or reserved ranges nor to the host's own networks (Config.AllowEgress
//     opens prefixes of those);
//   - IPv4 forwarding turned on per interface, for the bridge and the
//     interfaces guest traffic leaves by, never with the global ip_forward.
//
// Every function acts on the network namespace of the calling process.
package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// Config describes the host's VM network.
type Config struct {
	// Bridge is the name of the bridge the taps are attached to, e.g. "fcm0".
	Bridge string
	// Subnet is the guests' IPv4 subnet, e.g. 172.16.0.0/24. The bridge holds
	// its first host address (see Gateway).
	Subnet netip.Prefix
	// HostPorts are the host TCP ports guests may open connections to, on any
	// host address (DefaultHostPorts: Caddy's 80 and 443, for the VMs' public
	// URLs). Guests may also ping the host; every other port, TCP and UDP, is
	// closed to them. None when empty.
	HostPorts []uint16
	// AllowEgress are prefixes guests may reach although they are blocked by
	// default (link-local, private, CGNAT, multicast, reserved ranges and the
	// host's own networks), e.g. a database on the host's LAN.
	AllowEgress []netip.Prefix
	// GuestToGuest lets guests talk to each other directly on the bridge. By
	// default they cannot (they still reach each other's public URLs through
	// Caddy on the host).
	GuestToGuest bool
}

// DefaultHostPorts are the host ports guests need: Caddy's HTTP and HTTPS,
// so a VM can reach its own and other VMs' public URLs (hairpin).
var DefaultHostPorts = []uint16{80, 443}

// Gateway returns the bridge's address: the first host address of Subnet
// (172.16.0.1 for 172.16.0.0/24).
func (c Config) Gateway() netip.Addr {
	return c.Subnet.Masked().Addr().Next()
}

// Validate reports whether c is usable: an IPv4 subnet with a prefix length
// from 16 to 29, a valid interface name for the bridge, non-zero ports and
// IPv4 egress prefixes.
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
	for _, p := range c.HostPorts {
		if p == 0 {
			return errors.New("host port 0 is not a valid TCP port")
		}
	}
	for _, p := range c.AllowEgress {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("allowed egress %s: want an IPv4 prefix", p)
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

// Setup makes the bridge cfg.Bridge (or finds it) with the gateway address,
// leaving any other addresses on it alone, turns IPv6 off on it, brings it
// up, makes every port on it isolated (or not, with cfg.GuestToGuest), turns
// on IPv4 forwarding where guests need it (see forwarding.go) and atomically
// replaces the nftables tables "fcm" and "fcm-l2", keeping the VM bindings
// already in their sets. It is idempotent: a restarted daemon calls it again
// over the existing state and gets the same result.
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
	if err := isolatePorts(cfg.Bridge, !cfg.GuestToGuest); err != nil {
		return nil, err
	}
	hostNets, err := hostNetworks(cfg.Bridge)
	if err != nil {
		return nil, err
	}
	blocked := blockedRanges(hostNets)
	allowed := mergePrefixes(cfg.AllowEgress)
	fwd, err := enableForwarding(cfg.Bridge, blocked, allowed)
	if err != nil {
		return nil, err
	}
	if err := writeTables(cfg, blocked, allowed, fwd); err != nil {
		return nil, err
	}
	return &Host{cfg: cfg}, nil
}

// AddVM creates the persistent tap device tap (or reuses an existing one),
// attaches it to the bridge as an isolated port (unless GuestToGuest), brings
// it up, binds it to the VM's mac and ip (the only source addresses it may
// send from), pins the host's neighbour entry of ip to mac, and adds ip to the
// set of VM addresses. Calling it again for the same VM is harmless.
func (h *Host) AddVM(ctx context.Context, tap string, ip netip.Addr, mac net.HardwareAddr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validIfName(tap); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	if err := h.checkAddr(ip); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	if err := checkMAC(mac); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := ensureTap(h.cfg.Bridge, tap); err != nil {
		return err
	}
	return h.bind(tap, ip, mac)
}

// bind makes port (a tap, or in tests a veth standing in for one) a guest
// port of ip and mac: isolated unless GuestToGuest, bound in the bridge
// table, in the set of VM addresses, and pinned in the host's neighbours.
func (h *Host) bind(port string, ip netip.Addr, mac net.HardwareAddr) error {
	if err := setPort(port, !h.cfg.GuestToGuest); err != nil {
		return err
	}
	if err := addBinding(port, ip, mac); err != nil {
		return fmt.Errorf("tap %s: %w", port, err)
	}
	if err := addElement(ip); err != nil {
		return fmt.Errorf("tap %s: %w", port, err)
	}
	if err := pinNeighbour(h.cfg.Bridge, ip, mac); err != nil {
		return fmt.Errorf("tap %s: %w", port, err)
	}
	return nil
}

// RemoveVM deletes the tap device tap, its bindings, the host's neighbour
// entry of ip and ip from the set of VM addresses. A missing tap or address is
// not an error; an invalid (zero) ip removes what is bound to the tap, for
// cleaning up a tap whose address is unknown, and an empty tap removes what
// is bound to ip, for an element whose tap is unknown.
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
	free, err := removeBindings(tap, ip)
	if err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	for _, a := range free {
		if err := unpinNeighbour(h.cfg.Bridge, a); err != nil {
			return fmt.Errorf("tap %s: %w", tap, err)
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

// Teardown turns IPv4 forwarding off again on the interfaces where Setup
// turned it on, deletes the nftables tables "fcm" and "fcm-l2" and the bridge
// cfg.Bridge (with its sysctls and neighbour entries). What is already gone is
// not an error. Taps still attached to the bridge are detached, not deleted.
func Teardown(ctx context.Context, cfg Config) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validIfName(cfg.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if err := restoreForwarding(); err != nil {
		return err
	}
	if err := deleteTables(); err != nil {
		return err
	}
	return deleteBridge(cfg.Bridge)
}

// checkMAC verifies mac is a unicast Ethernet address.
func checkMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("vm MAC %q is not an Ethernet address", mac)
	case mac[0]&1 == 1:
		return fmt.Errorf("vm MAC %s is a multicast address", mac)
	}
	return nil
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
