package network

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// The bridge table binds each guest port to its VM's MAC and IPv4 address.
// Its one chain sees every frame a bridge port sends, before the bridge
// learns its source MAC or switches it:
//
//	iifname != @guests accept
//	iifname . ether saddr != @macs drop
//	ether type arp (Ethernet/IPv4 ARP) iifname . arp saddr ether . arp saddr ip @ports accept
//	ether type ip iifname . ether saddr . ip saddr @ports accept
//	drop
//
// so a guest sends only from its own MAC, only ARP and IPv4 (no IPv6, no
// VLAN tags, nothing else), and claims in ARP and IPv4 only its own address.
// Ports that are not fcm's guests (of other bridges) are not touched. (The
// chain is keyed on port names rather than on the bridge's name, meta
// ibrname, which needs a kernel module that not every kernel has.)
const (
	l2TableName  = "fcm-l2"
	guestSetName = "guests" // ifname
	portSetName  = "ports"  // ifname . ether_addr . ipv4_addr
	macSetName   = "macs"   // ifname . ether_addr
)

var l2Table = &nftables.Table{Name: l2TableName, Family: nftables.TableFamilyBridge}

// Register numbers for concatenations: the 32-bit registers start at 8; an
// interface name takes 4 of them, a MAC 2 (padded).
const (
	regName = 8
	regMAC  = 12
	regIP   = 14
)

func guestSet() *nftables.Set {
	return &nftables.Set{Table: l2Table, Name: guestSetName, KeyType: nftables.TypeIFName}
}

func portSet() *nftables.Set {
	return &nftables.Set{Table: l2Table, Name: portSetName, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)}
}

func macSet() *nftables.Set {
	return &nftables.Set{Table: l2Table, Name: macSetName, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)}
}

// macKey and portKey are set keys: the NUL-padded name, the MAC padded to 8
// bytes, the address.
func macKey(port string, mac net.HardwareAddr) []byte {
	return slices.Concat(ifname(port), mac, []byte{0, 0})
}

func portKey(port string, mac net.HardwareAddr, ip netip.Addr) []byte {
	return slices.Concat(macKey(port, mac), ip.AsSlice())
}

// arpEthIPv4 is the start of an Ethernet/IPv4 ARP packet: hardware type 1,
// protocol 0x0800, address lengths 6 and 4.
var arpEthIPv4 = []byte{0, 1, 8, 0, 6, 4}

// addL2 adds the sets, chain and rules of the table bridge fcm-l2 to c.
func addL2(c *nftables.Conn, guests, ports, macs []nftables.SetElement) error {
	gs, ps, ms := guestSet(), portSet(), macSet()
	if err := c.AddSet(gs, guests); err != nil {
		return fmt.Errorf("nftables set %s: %w", guestSetName, err)
	}
	if err := c.AddSet(ps, ports); err != nil {
		return fmt.Errorf("nftables set %s: %w", portSetName, err)
	}
	if err := c.AddSet(ms, macs); err != nil {
		return fmt.Errorf("nftables set %s: %w", macSetName, err)
	}
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "guests", Table: l2Table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200), Policy: &policy,
	})
	name := []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regName}}
	etherSaddr := []expr.Any{&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}}
	etherType := func(t uint16) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
		}
	}
	lookup := func(s *nftables.Set, invert bool) []expr.Any {
		return []expr.Any{&expr.Lookup{SourceRegister: regName, SetName: s.Name, SetID: s.ID, Invert: invert}}
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	for _, r := range [][]expr.Any{
		join(name, lookup(gs, true), accept),
		join(name, etherSaddr, lookup(ms, true), drop),
		join(etherType(0x0806), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: arpEthIPv4},
		}, name, []expr.Any{
			&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
			&expr.Payload{DestRegister: regIP, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
		}, lookup(ps, false), accept),
		join(etherType(0x0800), name, etherSaddr, []expr.Any{
			&expr.Payload{DestRegister: regIP, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		}, lookup(ps, false), accept),
		drop,
	} {
		c.AddRule(&nftables.Rule{Table: l2Table, Chain: ch, Exprs: r})
	}
	return nil
}

// addBinding lets port send from mac and ip; an existing binding is fine.
func addBinding(port string, ip netip.Addr, mac net.HardwareAddr) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.SetAddElements(guestSet(), []nftables.SetElement{{Key: ifname(port)}}); err != nil {
		return fmt.Errorf("bind %s: %w", port, err)
	}
	if err := c.SetAddElements(macSet(), []nftables.SetElement{{Key: macKey(port, mac)}}); err != nil {
		return fmt.Errorf("bind %s to %s: %w", port, mac, err)
	}
	if err := c.SetAddElements(portSet(), []nftables.SetElement{{Key: portKey(port, mac, ip)}}); err != nil {
		return fmt.Errorf("bind %s to %s %s: %w", port, mac, ip, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("bind %s to %s %s in nftables table bridge %s: %w", port, mac, ip, l2TableName, err)
	}
	return nil
}

// binding is one element of the set of port bindings.
type binding struct {
	port string
	mac  net.HardwareAddr
	ip   netip.Addr
}

// bindings reads the set of port bindings.
func bindings() ([]binding, error) {
	elems, err := existingElements(l2Table, portSet(), nftables.TableFamilyBridge)
	if err != nil {
		return nil, err
	}
	var bs []binding
	for _, e := range elems {
		k := e.Key
		ip, _ := netip.AddrFromSlice(k[24:28])
		bs = append(bs, binding{port: string(bytes.TrimRight(k[:16], "\x00")), mac: net.HardwareAddr(slices.Clone(k[16:22])), ip: ip})
	}
	return bs, nil
}

// removeBindings deletes the bindings of port (if not empty) and of ip (if
// valid), and returns the addresses that were bound and are bound to no port
// any more, ip included.
func removeBindings(port string, ip netip.Addr) ([]netip.Addr, error) {
	bs, err := bindings()
	if err != nil {
		return nil, err
	}
	var gone, kept []binding
	for _, b := range bs {
		if port != "" && b.port == port || ip.IsValid() && b.ip == ip {
			gone = append(gone, b)
		} else {
			kept = append(kept, b)
		}
	}
	if len(gone) > 0 {
		c, err := nftables.New()
		if err != nil {
			return nil, fmt.Errorf("nftables: %w", err)
		}
		var ge, pe, me []nftables.SetElement
		for _, b := range gone {
			pe = append(pe, nftables.SetElement{Key: portKey(b.port, b.mac, b.ip)})
			if !slices.ContainsFunc(kept, func(k binding) bool { return k.port == b.port }) &&
				!slices.ContainsFunc(ge, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, ifname(b.port)) }) {
				ge = append(ge, nftables.SetElement{Key: ifname(b.port)})
			}
			if !slices.ContainsFunc(kept, func(k binding) bool { return k.port == b.port && bytes.Equal(k.mac, b.mac) }) &&
				!slices.ContainsFunc(me, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, macKey(b.port, b.mac)) }) {
				me = append(me, nftables.SetElement{Key: macKey(b.port, b.mac)})
			}
		}
		if err := c.SetDeleteElements(portSet(), pe); err != nil {
			return nil, fmt.Errorf("unbind: %w", err)
		}
		if len(ge) > 0 {
			if err := c.SetDeleteElements(guestSet(), ge); err != nil {
				return nil, fmt.Errorf("unbind: %w", err)
			}
		}
		if len(me) > 0 {
			if err := c.SetDeleteElements(macSet(), me); err != nil {
				return nil, fmt.Errorf("unbind: %w", err)
			}
		}
		if err := c.Flush(); err != nil {
			return nil, fmt.Errorf("unbind in nftables table bridge %s: %w", l2TableName, err)
		}
	}
	var free []netip.Addr
	for _, b := range gone {
		free = append(free, b.ip)
	}
	if ip.IsValid() {
		free = append(free, ip)
	}
	slices.SortFunc(free, netip.Addr.Compare)
	free = slices.Compact(free)
	return slices.DeleteFunc(free, func(a netip.Addr) bool {
		return slices.ContainsFunc(kept, func(k binding) bool { return k.ip == a })
	}), nil
}
