package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPv4 forwarding, per interface.
//
// Linux decides whether to forward an IPv4 packet by the forwarding setting of
// the interface the packet arrives on (net.ipv4.conf.<if>.forwarding; the
// global net.ipv4.ip_forward is conf.all.forwarding and writes every
// interface at once). Guest traffic arrives on the bridge, so the bridge needs
// forwarding; the replies to masqueraded guest traffic arrive on the
// interface the traffic left by (the uplink), so the uplinks need it too.
// Setup therefore turns forwarding on for the bridge and for the interfaces
// holding a route guests may use (a route to somewhere not entirely in the
// blocked ranges, such as the default route, or into an AllowEgress prefix),
// and leaves the global knob and every other interface alone: the host does
// not forward between its other interfaces unless it did before. Packets
// arriving on an uplink may be forwarded to the host's other interfaces as
// well (Linux cannot tell replies to guests from the rest at that point); the
// host's own firewall decides about those, fcm's chains do not touch them.
//
// The interfaces whose forwarding fcm turned on are recorded in the set "fwd"
// of the table inet fcm, so a re-Setup and Teardown can turn them off again.

// ipv4Conf and ipv6Conf are the paths of a per-interface sysctl.
func ipv4Conf(dev, key string) string { return filepath.Join("/proc/sys/net/ipv4/conf", dev, key) }
func ipv6Conf(dev, key string) string { return filepath.Join("/proc/sys/net/ipv6/conf", dev, key) }

// writeSysctl writes value to the sysctl at path. With optional, a missing
// sysctl (IPv6 compiled out or disabled at boot, an interface gone) is fine.
func writeSysctl(path, value string, optional bool) error {
	err := os.WriteFile(path, []byte(value+"\n"), 0o644)
	if optional && errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sysctl %s = %s: %w", path, value, err)
	}
	return nil
}

// readSysctl reads the sysctl at path, trimmed.
func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

// enableForwarding turns on forwarding for the bridge and the uplinks, turns
// it off again on interfaces a previous Setup turned on that are no longer
// uplinks, and returns the interfaces whose forwarding fcm now owns.
func enableForwarding(bridge string, blocked, allowed []span) ([]string, error) {
	if err := writeSysctl(ipv4Conf(bridge, "forwarding"), "1", false); err != nil {
		return nil, fmt.Errorf("enable forwarding on bridge %s: %w", bridge, err)
	}
	prev, err := recordedForwarding()
	if err != nil {
		return nil, err
	}
	want, err := uplinks(bridge, blocked, allowed)
	if err != nil {
		return nil, err
	}
	var owned []string
	for _, dev := range prev {
		if !slices.Contains(want, dev) {
			if err := writeSysctl(ipv4Conf(dev, "forwarding"), "0", true); err != nil {
				return nil, err
			}
		}
	}
	for _, dev := range want {
		cur, err := readSysctl(ipv4Conf(dev, "forwarding"))
		if err != nil {
			return nil, fmt.Errorf("forwarding on %s: %w", dev, err)
		}
		switch {
		case cur == "0":
			if err := writeSysctl(ipv4Conf(dev, "forwarding"), "1", false); err != nil {
				return nil, fmt.Errorf("enable forwarding on uplink %s: %w", dev, err)
			}
			owned = append(owned, dev)
		case slices.Contains(prev, dev):
			owned = append(owned, dev)
		}
	}
	return owned, nil
}

// restoreForwarding turns forwarding off again on the interfaces recorded as
// turned on by fcm (ones that are gone meanwhile are skipped).
func restoreForwarding() error {
	devs, err := recordedForwarding()
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if err := writeSysctl(ipv4Conf(dev, "forwarding"), "0", true); err != nil {
			return err
		}
	}
	return nil
}

// uplinks lists the interfaces (other than the bridge and loopback) holding a
// main-table IPv4 route to a destination guests may reach, sorted.
func uplinks(bridge string, blocked, allowed []span) ([]string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var devs []string
	for _, r := range routes {
		dst := netip.MustParsePrefix("0.0.0.0/0")
		if r.Dst != nil {
			ones, _ := r.Dst.Mask.Size()
			a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			dst = netip.PrefixFrom(a, ones)
		}
		if !overlaps(dst, allowed) && covered(dst, blocked) {
			continue
		}
		idx := []int{r.LinkIndex}
		for _, nh := range r.MultiPath {
			idx = append(idx, nh.LinkIndex)
		}
		for _, i := range idx {
			if i == 0 {
				continue
			}
			l, err := netlink.LinkByIndex(i)
			if err != nil {
				return nil, fmt.Errorf("link of route %s: %w", dst, err)
			}
			a := l.Attrs()
			if a.Name == bridge || a.Flags&unix.IFF_LOOPBACK != 0 || slices.Contains(devs, a.Name) {
				continue
			}
			devs = append(devs, a.Name)
		}
	}
	slices.Sort(devs)
	return devs, nil
}

// hostNetworks returns the prefixes of the host's IPv4 addresses on every
// interface but the bridge.
func hostNetworks(bridge string) ([]netip.Prefix, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	var nets []netip.Prefix
	for _, a := range addrs {
		if a.LinkIndex == br.Attrs().Index || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IPNet.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.IPNet.Mask.Size()
		nets = append(nets, netip.PrefixFrom(ip, ones).Masked())
	}
	return nets, nil
}

// blockedEgress are the ranges guests may not reach unless allowed: "this
// network", private (RFC 1918), CGNAT, loopback, link-local (cloud metadata),
// multicast and reserved.
var blockedEgress = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// blockedRanges is blockedEgress plus the host's own networks, merged.
func blockedRanges(hostNets []netip.Prefix) []span {
	return mergePrefixes(slices.Concat(blockedEgress, hostNets))
}

// span is a range of IPv4 addresses, both ends included.
type span struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// prefixSpan is the range of addresses of an IPv4 prefix.
func prefixSpan(p netip.Prefix) span {
	lo := u32(p.Masked().Addr())
	return span{lo, lo | uint32(uint64(1)<<(32-p.Bits())-1)}
}

// mergePrefixes turns IPv4 prefixes into sorted, disjoint, non-adjacent
// ranges, as an nftables interval set wants them.
func mergePrefixes(ps []netip.Prefix) []span {
	var s []span
	for _, p := range ps {
		if p.IsValid() && p.Addr().Is4() {
			s = append(s, prefixSpan(p))
		}
	}
	slices.SortFunc(s, func(a, b span) int { return int(int64(a.lo) - int64(b.lo)) })
	var out []span
	for _, x := range s {
		if n := len(out); n > 0 && uint64(x.lo) <= uint64(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, x.hi)
			continue
		}
		out = append(out, x)
	}
	return out
}

// covered reports whether all of p lies in one of spans.
func covered(p netip.Prefix, spans []span) bool {
	x := prefixSpan(p)
	return slices.ContainsFunc(spans, func(s span) bool { return s.lo <= x.lo && x.hi <= s.hi })
}

// overlaps reports whether any of p lies in spans.
func overlaps(p netip.Prefix, spans []span) bool {
	x := prefixSpan(p)
	return slices.ContainsFunc(spans, func(s span) bool { return s.lo <= x.hi && x.lo <= s.hi })
}
