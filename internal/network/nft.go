package network

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The nftables objects fcm owns.
const (
	tableName = "fcm"
	setName   = "vms"
)

// table is fcm's nftables table. The family is inet so the input rule also
// covers IPv6 (a guest can reach the host over the bridge's link-local
// address).
var table = &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}

// vmSet returns a reference to the set of VM addresses.
func vmSet() *nftables.Set {
	return &nftables.Set{Table: table, Name: setName, KeyType: nftables.TypeIPAddr}
}

// writeTable replaces the table "fcm" in one transaction: it creates it if
// missing, deletes it and builds it anew, re-adding the VM addresses that were
// in its set. Nobody sees a moment without the rules.
func writeTable(cfg Config) error {
	elems, err := existingElements()
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	vms := vmSet()
	if err := c.AddSet(vms, elems); err != nil {
		return fmt.Errorf("nftables set %s: %w", setName, err)
	}
	br := ifname(cfg.Bridge)

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

	// forward: anti-spoofing on traffic from the guests, and nothing routed to
	// them but replies and guest-to-guest traffic.
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	rules := [][]expr.Any{
		// iifname "fcm0" ip saddr != @vms drop
		join(metaName(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), isIPv4(), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: vms.Name, SetID: vms.ID, Invert: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}),
		// iifname "fcm0" meta nfproto != ipv4 drop (guests get no IPv6 routing)
		join(metaName(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}),
		// oifname "fcm0" ct state established,related accept
		join(metaName(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}),
		// iifname "fcm0" oifname "fcm0" accept
		join(metaName(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), metaName(expr.MetaKeyOIFNAME, expr.CmpOpEq, br),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}),
		// oifname "fcm0" drop
		join(metaName(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: table, Chain: fwd, Exprs: r})
	}

	// input: guests may not reach the protected TCP ports on any host address.
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	if ports := sortedPorts(cfg.ProtectPorts); len(ports) > 0 {
		portSet := &nftables.Set{Table: table, Anonymous: true, Constant: true, KeyType: nftables.TypeInetService}
		var pe []nftables.SetElement
		for _, p := range ports {
			pe = append(pe, nftables.SetElement{Key: []byte{byte(p >> 8), byte(p)}})
		}
		if err := c.AddSet(portSet, pe); err != nil {
			return fmt.Errorf("nftables set of protected ports: %w", err)
		}
		// iifname "fcm0" tcp dport { ... } drop
		c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: join(
			metaName(expr.MetaKeyIIFNAME, expr.CmpOpEq, br),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, SetName: portSet.Name, SetID: portSet.ID},
				&expr.Verdict{Kind: expr.VerdictDrop},
			},
		)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table inet %s: %w", tableName, err)
	}
	return nil
}

// existingElements returns the elements of the set of VM addresses if the
// table and the set exist, nil otherwise.
func existingElements() ([]nftables.SetElement, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == tableName }) {
		return nil, nil
	}
	sets, err := c.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("list sets of nftables table inet %s: %w", tableName, err)
	}
	if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == setName }) {
		return nil, nil
	}
	elems, err := c.GetSetElements(vmSet())
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", setName, err)
	}
	var keep []nftables.SetElement
	for _, e := range elems {
		if len(e.Key) == 4 {
			keep = append(keep, nftables.SetElement{Key: e.Key})
		}
	}
	return keep, nil
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

// deleteTable deletes the table if it exists: adding it first in the same
// transaction makes the deletion succeed either way.
func deleteTable() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	c.AddTable(table)
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", tableName, err)
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
