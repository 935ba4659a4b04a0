package store

import (
	"fmt"
	"net/netip"
)

// Pool is the range of addresses VMs are leased from, inclusive.
type Pool struct {
	First, Last netip.Addr
}

// PoolFor returns the default pool of an IPv4 subnet: from the 50th address to
// the last before broadcast (.50-.254 in a /24); a larger subnet gives more.
func PoolFor(subnet netip.Prefix) (Pool, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() < 8 || subnet.Bits() > 26 {
		return Pool{}, fmt.Errorf("subnet %s: want an IPv4 prefix between /8 and /26", subnet)
	}
	base := subnet.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	size := uint32(1) << (32 - subnet.Bits())
	return Pool{First: addrFrom(n + 50), Last: addrFrom(n + size - 2)}, nil
}

func addrFrom(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// Size is the number of addresses in the pool.
func (p Pool) Size() int {
	a, b := p.First.As4(), p.Last.As4()
	x := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	y := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return int(y-x) + 1
}

// Lease gives vmID the lowest free address of pool; ErrExhausted when none is.
func (t *Tx) Lease(vmID string, pool Pool) (netip.Addr, error) {
	b := t.tx.Bucket(bucketLeases)
	for ip := pool.First; ip.IsValid() && ip.Compare(pool.Last) <= 0; ip = ip.Next() {
		if b.Get([]byte(ip.String())) == nil {
			if err := b.Put([]byte(ip.String()), []byte(vmID)); err != nil {
				return netip.Addr{}, err
			}
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: all %d addresses from %s to %s are leased", ErrExhausted, pool.Size(), pool.First, pool.Last)
}

// Release frees every address leased to vmID.
func (t *Tx) Release(vmID string) error {
	b := t.tx.Bucket(bucketLeases)
	var drop [][]byte
	b.ForEach(func(k, v []byte) error {
		if string(v) == vmID {
			drop = append(drop, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Leases returns every lease: address -> vm id.
func (t *Tx) Leases() (map[netip.Addr]string, error) {
	out := map[netip.Addr]string{}
	err := t.tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
		ip, err := netip.ParseAddr(string(k))
		if err != nil {
			return fmt.Errorf("lease %q: %w", k, err)
		}
		out[ip] = string(v)
		return nil
	})
	return out, err
}
