package network

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The nftables objects fcm owns.
const (
	tableName = "fcm"
	setName   = "vms"
	fwdSet    = "fwd"          // interfaces whose forwarding fcm turned on
	allowSet  = "egress_allow" // AllowEgress
	blockSet  = "egress_block" // blocked ranges and the host's networks
	localSet  = "host_local"   // host addresses guests never reach: loopback, link-local
)

// hostLocal are the host's addresses that are not routable, which guests
// reach on no port (HostPorts are open only on the host's routable
// addresses): a service bound to 127.0.0.1 or to a link-local address such as
// 169.254.169.254 is meant for the host alone. This network (0/8), multicast,
// reserved and broadcast are never a host service a guest should open.
var hostLocal = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// table is fcm's nftables table for routed traffic. The family is inet so the
// input rules also cover IPv6.
var table = &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}

// vmSet returns a reference to the set of VM addresses.
func vmSet() *nftables.Set {
	return &nftables.Set{Table: table, Name: setName, KeyType: nftables.TypeIPAddr}
}

// fwdIfSet returns a reference to the set of interfaces whose forwarding fcm
// turned on.
func fwdIfSet() *nftables.Set {
	return &nftables.Set{Table: table, Name: fwdSet, KeyType: nftables.TypeIFName}
}

// writeTables replaces the tables "fcm" and "fcm-l2" in one transaction: it
// creates them if missing, deletes them and builds them anew, re-adding the
// VM addresses and bindings that were in their sets. Nobody sees a moment
// without the rules.
func writeTables(cfg Config, blocked, allowed []span, fwd []string) error {
	elems, err := existingElements(table, vmSet(), nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	guests, err := existingElements(l2Table, guestSet(), nftables.TableFamilyBridge)
	if err != nil {
		return err
	}
	ports, err := existingElements(l2Table, portSet(), nftables.TableFamilyBridge)
	if err != nil {
		return err
	}
	macs, err := existingElements(l2Table, macSet(), nftables.TableFamilyBridge)
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, t := range []*nftables.Table{table, l2Table} {
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
	}
	if err := addL2(c, guests, ports, macs); err != nil {
		return err
	}
	if err := addInet(c, cfg, elems, blocked, allowed, fwd); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables tables inet %s and bridge %s: %w", tableName, l2TableName, err)
	}
	return nil
}

// addInet adds the sets, chains and rules of the table inet fcm to c.
func addInet(c *nftables.Conn, cfg Config, elems []nftables.SetElement, blocked, allowed []span, fwd []string) error {
	vms := vmSet()
	if err := c.AddSet(vms, elems); err != nil {
		return fmt.Errorf("nftables set %s: %w", setName, err)
	}
	fs := fwdIfSet()
	var fe []nftables.SetElement
	for _, dev := range fwd {
		fe = append(fe, nftables.SetElement{Key: ifname(dev)})
	}
	if err := c.AddSet(fs, fe); err != nil {
		return fmt.Errorf("nftables set %s: %w", fwdSet, err)
	}
	allow := &nftables.Set{Table: table, Name: allowSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(allow, intervalElements(allowed)); err != nil {
		return fmt.Errorf("nftables set %s: %w", allowSet, err)
	}
	block := &nftables.Set{Table: table, Name: blockSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(block, intervalElements(blocked)); err != nil {
		return fmt.Errorf("nftables set %s: %w", blockSet, err)
	}
	local := &nftables.Set{Table: table, Name: localSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(local, intervalElements(mergePrefixes(hostLocal))); err != nil {
		return fmt.Errorf("nftables set %s: %w", localSet, err)
	}
	br := ifname(cfg.Bridge)
	fromGuests := metaName(expr.MetaKeyIIFNAME, expr.CmpOpEq, br)
	toGuests := metaName(expr.MetaKeyOIFNAME, expr.CmpOpEq, br)
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}

	// postrouting: masquerade the subnet's traffic leaving by another interface.
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	mask := net4Mask(cfg.Subnet.Bits())
	c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: join(
		isIPv4(),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: cfg.Subnet.Addr().AsSlice()},
		},
		metaName(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
		[]expr.Any{&expr.Masq{}},
	)})

	// forward: only packets from or to the bridge are decided here; traffic
	// between the host's other interfaces is never touched (a drop in any
	// base chain would be final).
	policy := nftables.ChainPolicyAccept
	fwdChain := c.AddChain(&nftables.Chain{
		Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	g2g := drop
	if cfg.GuestToGuest {
		g2g = accept
	}
	for _, r := range [][]expr.Any{
		// iifname "fcm0" oifname "fcm0" drop (a guest routing to another
		// through the gateway), or accept with GuestToGuest
		join(fromGuests, toGuests, g2g),
		// oifname "fcm0" ct state established,related accept
		join(toGuests, ctEstablished(), accept),
		// oifname "fcm0" drop: nothing opens connections to guests through the host
		join(toGuests, drop),
		// iifname "fcm0" ip saddr != @vms drop
		join(fromGuests, ipField(12), []expr.Any{
			&expr.Lookup{SourceRegister: 1, SetName: vms.Name, SetID: vms.ID, Invert: true},
		}, drop),
		// iifname "fcm0" meta nfproto != ipv4 drop (guests get no IPv6)
		join(fromGuests, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}, drop),
		// iifname "fcm0" ip daddr @egress_allow accept
		join(fromGuests, ipField(16), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: allow.Name, SetID: allow.ID}}, accept),
		// iifname "fcm0" ip daddr @egress_block drop
		join(fromGuests, ipField(16), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: block.Name, SetID: block.ID}}, drop),
		// iifname "fcm0" accept: the internet
		join(fromGuests, accept),
	} {
		c.AddRule(&nftables.Rule{Table: table, Chain: fwdChain, Exprs: r})
	}

	// input: from the guests, the host accepts only replies, ping and the
	// allowed TCP ports over IPv4, on its routable addresses only.
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	rules := [][]expr.Any{
		// iifname "fcm0" ct state established,related accept
		join(fromGuests, ctEstablished(), accept),
		// iifname "fcm0" ip daddr @host_local drop
		join(fromGuests, ipField(16), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: local.Name, SetID: local.ID}}, drop),
		// iifname "fcm0" icmp type echo-request accept
		join(fromGuests, isIPv4(), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
		}, accept),
	}
	if ports := sortedPorts(cfg.HostPorts); len(ports) > 0 {
		portSet := &nftables.Set{Table: table, Anonymous: true, Constant: true, KeyType: nftables.TypeInetService}
		var pe []nftables.SetElement
		for _, p := range ports {
			pe = append(pe, nftables.SetElement{Key: []byte{byte(p >> 8), byte(p)}})
		}
		if err := c.AddSet(portSet, pe); err != nil {
			return fmt.Errorf("nftables set of host ports: %w", err)
		}
		// iifname "fcm0" meta nfproto ipv4 tcp dport { ... } accept
		rules = append(rules, join(fromGuests, isIPv4(), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: 1, SetName: portSet.Name, SetID: portSet.ID},
		}, accept))
	}
	// iifname "fcm0" drop
	rules = append(rules, join(fromGuests, drop))
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: r})
	}
	return nil
}

// intervalElements turns ranges into the elements of an interval set: each
// range's first address, and the address after its last as an interval end
// (none for a range ending at 255.255.255.255).
func intervalElements(spans []span) []nftables.SetElement {
	var e []nftables.SetElement
	for _, s := range spans {
		e = append(e, nftables.SetElement{Key: addr(s.lo).AsSlice()})
		if s.hi != ^uint32(0) {
			e = append(e, nftables.SetElement{Key: addr(s.hi + 1).AsSlice(), IntervalEnd: true})
		}
	}
	return e
}

// existingElements returns the elements of set in table t if both exist,
// nil otherwise.
func existingElements(t *nftables.Table, set *nftables.Set, family nftables.TableFamily) ([]nftables.SetElement, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(family)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }) {
		return nil, nil
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets of nftables table %s: %w", t.Name, err)
	}
	if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == set.Name }) {
		return nil, nil
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", set.Name, err)
	}
	var keep []nftables.SetElement
	for _, e := range elems {
		if len(e.Key) == int(set.KeyType.Bytes) {
			keep = append(keep, nftables.SetElement{Key: e.Key})
		}
	}
	return keep, nil
}

// recordedForwarding lists the interfaces whose forwarding fcm turned on, as
// recorded in the set "fwd" of the table inet fcm.
func recordedForwarding() ([]string, error) {
	elems, err := existingElements(table, fwdIfSet(), nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	var devs []string
	for _, e := range elems {
		devs = append(devs, strings.TrimRight(string(e.Key), "\x00"))
	}
	return devs, nil
}

// addElement adds ip to the set of VM addresses; an existing element is fine.
func addElement(ip netip.Addr) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.SetAddElements(vmSet(), []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return fmt.Errorf("add %s to nftables set %s: %w", ip, setName, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add %s to nftables set %s: %w", ip, setName, err)
	}
	return nil
}

// deleteElement removes ip from the set of VM addresses; a missing element
// is fine.
func deleteElement(ip netip.Addr) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.SetDeleteElements(vmSet(), []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return fmt.Errorf("remove %s from nftables set %s: %w", ip, setName, err)
	}
	ferr := c.Flush()
	if ferr == nil {
		return nil
	}
	// The kernel fails the whole batch when the element is missing (ENOENT);
	// whether that was the reason is checked rather than guessed from the error.
	addrs, err := vmAddrs()
	if err == nil && !slices.Contains(addrs, ip) {
		return nil
	}
	return fmt.Errorf("remove %s from nftables set %s: %w", ip, setName, ferr)
}

// vmAddrs lists the addresses in the set of VM addresses, sorted.
func vmAddrs() ([]netip.Addr, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	elems, err := c.GetSetElements(vmSet())
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s in table inet %s: %w", setName, tableName, err)
	}
	var addrs []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok && a.Is4() {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs, nil
}

// deleteTables deletes fcm's tables if they exist: adding each first in the
// same transaction makes the deletion succeed either way.
func deleteTables() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, t := range []*nftables.Table{table, l2Table} {
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables tables inet %s and bridge %s: %w", tableName, l2TableName, err)
	}
	return nil
}

// ifname is name as the kernel compares interface names: NUL-padded to 16 bytes.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// metaName matches the input or output interface name.
func metaName(key expr.MetaKey, op expr.CmpOp, name []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: name},
	}
}

// isIPv4 matches IPv4 packets, which an inet table must check before loading
// IPv4 header fields.
func isIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// ipField loads 4 bytes of the IPv4 header at offset (12 saddr, 16 daddr)
// into register 1, for IPv4 packets only.
func ipField(offset uint32) []expr.Any {
	return join(isIPv4(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
	})
}

// ctEstablished matches packets of known connections: ct state
// established,related.
func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// net4Mask is the IPv4 netmask of a prefix length.
func net4Mask(bits int) []byte {
	m := uint32(0xffffffff) << (32 - bits)
	return []byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

// sortedPorts returns ports sorted without duplicates.
func sortedPorts(ports []uint16) []uint16 {
	p := slices.Clone(ports)
	slices.Sort(p)
	return slices.Compact(p)
}

// join concatenates expression lists.
func join(parts ...[]expr.Any) []expr.Any {
	return slices.Concat(parts...)
}
