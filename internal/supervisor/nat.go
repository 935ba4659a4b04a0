package supervisor

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// enableNAT lets the slots reach the world through the VM's own address:
// forwarding on, and masquerade for the slots' subnet (table ip fcm-app).
func enableNAT() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("ip_forward: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "fcm-app"}
	c.AddTable(table)
	c.DelTable(table) // start from nothing: a restarted supervisor rebuilds it
	c.AddTable(table)
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	mask := []byte{255, 255, 255, 0}
	c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: []expr.Any{
		// ip saddr 10.254.0.0/24
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: slotNet.Addr().AsSlice()},
		// ip daddr != 10.254.0.0/24
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: slotNet.Addr().AsSlice()},
		&expr.Masq{},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables masquerade for %s: %w", slotNet, err)
	}
	return nil
}
