package store

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fcm.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestStore_VMs(t *testing.T) {
	s, path := openTest(t)
	vm := &VM{ID: "abcd1234", Name: "cosmic-nova", State: "creating", IP: "172.16.0.50", CPUs: 1}
	if err := s.Update(func(tx *Tx) error { return tx.InsertVM(vm) }); err != nil {
		t.Fatal(err)
	}
	dupName := &VM{ID: "zzzz9999", Name: "cosmic-nova"}
	if err := s.Update(func(tx *Tx) error { return tx.InsertVM(dupName) }); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name: %v", err)
	}
	dupID := &VM{ID: "abcd1234", Name: "other"}
	if err := s.Update(func(tx *Tx) error { return tx.InsertVM(dupID) }); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate id: %v", err)
	}
	if _, err := s.UpdateVM("cosmic-nova", func(v *VM) error { v.State = "running"; return nil }); err != nil {
		t.Fatal(err)
	}
	// A failing update changes nothing.
	s.UpdateVM("cosmic-nova", func(v *VM) error { v.State = "broken"; return errors.New("no") })
	got, err := s.GetVM("cosmic-nova")
	if err != nil || got.State != "running" || got.IP != "172.16.0.50" {
		t.Fatalf("GetVM = %+v, %v", got, err)
	}
	if _, err := s.GetVM("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM(nope) = %v", err)
	}
	if err := s.View(func(tx *Tx) error { _, err := tx.VMByID("abcd1234"); return err }); err != nil {
		t.Errorf("VMByID: %v", err)
	}
	// Durable: reopen and read it back.
	s.Close()
	s2, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	vms, err := s2.ListVMs()
	if err != nil || len(vms) != 1 || vms[0].Name != "cosmic-nova" || vms[0].State != "running" {
		t.Fatalf("after reopen: %+v, %v", vms, err)
	}
	if err := s2.Update(func(tx *Tx) error { return tx.DeleteVM("cosmic-nova") }); err != nil {
		t.Fatal(err)
	}
	if err := s2.View(func(tx *Tx) error { _, err := tx.VMByID("abcd1234"); return err }); !errors.Is(err, ErrNotFound) {
		t.Errorf("id survives delete: %v", err)
	}
}

func TestStore_LockedByAnotherOpen(t *testing.T) {
	_, path := openTest(t)
	start := time.Now()
	_, err := Open(path, 200*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("Open did not honour its timeout")
	}
}

func TestPoolFor(t *testing.T) {
	tests := []struct {
		subnet      string
		first, last string
		size        int
		wantErr     bool
	}{
		{"172.16.0.0/24", "172.16.0.50", "172.16.0.254", 205, false},
		{"10.1.0.0/16", "10.1.0.50", "10.1.255.254", 65485, false},
		{"172.16.0.7/24", "172.16.0.50", "172.16.0.254", 205, false},
		{"172.16.0.0/28", "", "", 0, true},
		{"fd00::/64", "", "", 0, true},
	}
	for _, tt := range tests {
		p, err := PoolFor(netip.MustParsePrefix(tt.subnet))
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err %v", tt.subnet, err)
			continue
		}
		if err == nil && (p.First.String() != tt.first || p.Last.String() != tt.last || p.Size() != tt.size) {
			t.Errorf("%s: pool %s-%s (%d)", tt.subnet, p.First, p.Last, p.Size())
		}
	}
}

func TestStore_Leases(t *testing.T) {
	s, _ := openTest(t)
	pool := Pool{First: netip.MustParseAddr("172.16.0.50"), Last: netip.MustParseAddr("172.16.0.52")}
	var got []string
	for _, id := range []string{"a", "b", "c"} {
		var ip netip.Addr
		if err := s.Update(func(tx *Tx) (err error) { ip, err = tx.Lease(id, pool); return }); err != nil {
			t.Fatal(err)
		}
		got = append(got, ip.String())
	}
	if strings.Join(got, ",") != "172.16.0.50,172.16.0.51,172.16.0.52" {
		t.Errorf("leases %v", got)
	}
	err := s.Update(func(tx *Tx) error { _, err := tx.Lease("d", pool); return err })
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 3 addresses") {
		t.Fatalf("exhausted pool: %v", err)
	}
	// Releasing b frees .51, which the next lease gets.
	s.Update(func(tx *Tx) error { return tx.Release("b") })
	var ip netip.Addr
	s.Update(func(tx *Tx) (err error) { ip, err = tx.Lease("d", pool); return })
	if ip.String() != "172.16.0.51" {
		t.Errorf("after release got %s, want .51", ip)
	}
	var leases map[netip.Addr]string
	s.View(func(tx *Tx) (err error) { leases, err = tx.Leases(); return })
	if len(leases) != 3 || leases[netip.MustParseAddr("172.16.0.51")] != "d" {
		t.Errorf("leases %v", leases)
	}
}

func TestStore_ConcurrentLeasesAreDistinct(t *testing.T) {
	s, _ := openTest(t)
	pool, _ := PoolFor(netip.MustParsePrefix("172.16.0.0/24"))
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var ip netip.Addr
			if err := s.Update(func(tx *Tx) (err error) { ip, err = tx.Lease(fmt.Sprint(i), pool); return }); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[ip] {
				t.Errorf("%s leased twice", ip)
			}
			seen[ip] = true
		}(i)
	}
	wg.Wait()
}

func TestStore_Tokens(t *testing.T) {
	s, path := openTest(t)
	secret := NewSecret()
	if !strings.HasPrefix(secret, "fcm_") || len(secret) != 44 {
		t.Errorf("secret %q", secret)
	}
	s.Update(func(tx *Tx) error { return tx.PutToken(secret, &Token{ID: "admin", Name: "admin", Admin: true}) })
	var tok *Token
	if err := s.View(func(tx *Tx) (err error) { tok, err = tx.TokenFor(secret); return }); err != nil || tok.ID != "admin" || !tok.Admin {
		t.Fatalf("TokenFor = %+v, %v", tok, err)
	}
	for _, bad := range []string{"", "fcm_", secret + "x", strings.ToUpper(secret)} {
		if err := s.View(func(tx *Tx) error { _, err := tx.TokenFor(bad); return err }); !errors.Is(err, ErrNotFound) {
			t.Errorf("TokenFor(%q) = %v", bad, err)
		}
	}
	s.Close()
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), secret) || strings.Contains(string(raw), secret[4:]) {
		t.Error("the token secret is stored in clear")
	}
}

func TestStore_Ops(t *testing.T) {
	s, _ := openTest(t)
	op := &Op{ID: "op1", Kind: "create", VMName: "x", VMID: "abcd1234", StartedAt: time.Now()}
	s.Update(func(tx *Tx) error { return tx.PutOp(op) })
	op.Steps = append(op.Steps, "lease", "disk")
	s.Update(func(tx *Tx) error { return tx.PutOp(op) })
	var ops []*Op
	s.View(func(tx *Tx) (err error) { ops, err = tx.Ops(); return })
	if len(ops) != 1 || strings.Join(ops[0].Steps, ",") != "lease,disk" {
		t.Fatalf("ops %+v", ops)
	}
	s.Update(func(tx *Tx) error { return tx.DeleteOp("op1") })
	s.View(func(tx *Tx) (err error) { ops, err = tx.Ops(); return })
	if len(ops) != 0 {
		t.Errorf("op not deleted: %+v", ops)
	}
}
