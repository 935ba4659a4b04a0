package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
)

// TestOverQuota: a VM is refused when it would take its owner beyond any one
// of their limits (a zero limit is none), and the refusal names what is used,
// what is asked and what is allowed.
func TestOverQuota(t *testing.T) {
	req := func(cpus, mem int) api.CreateVMRequest { return api.CreateVMRequest{CPUs: cpus, MemoryMiB: mem} }
	tests := []struct {
		name string
		have Quota
		q    Quota
		req  api.CreateVMRequest
		want string // "" when admitted
	}{
		{"no limits", Quota{VMs: 99, MemoryMiB: 1 << 20, CPUs: 500}, Quota{}, req(32, 1<<18), ""},
		{"vms below", Quota{VMs: 2}, Quota{VMs: 3}, req(1, 1024), ""},
		{"vms at", Quota{VMs: 3}, Quota{VMs: 3}, req(1, 1024),
			"you have 3 VMs, the most this host allows per user (3, fcm daemon --max-vms-per-user): destroy one first (fcm destroy <vm>), or ask this host's admin"},
		{"memory exactly fits", Quota{VMs: 1, MemoryMiB: 1024}, Quota{MemoryMiB: 2048}, req(1, 1024), ""},
		{"memory one MiB over", Quota{VMs: 1, MemoryMiB: 1024}, Quota{MemoryMiB: 2047}, req(1, 1024),
			"your VMs have 1024 MiB of memory and this one asks for 1024 MiB: this host allows 2047 MiB per user in all (fcm daemon --max-memory-per-user)"},
		{"memory of one VM alone", Quota{}, Quota{MemoryMiB: 512}, req(1, 1024),
			"your VMs have 0 MiB of memory and this one asks for 1024 MiB: this host allows 512 MiB per user in all"},
		{"cpus exactly fit", Quota{CPUs: 6}, Quota{CPUs: 8}, req(2, 256), ""},
		{"cpus over", Quota{CPUs: 7}, Quota{CPUs: 8}, req(2, 256),
			"your VMs have 7 vCPUs and this one asks for 2: this host allows 8 vCPUs per user in all (fcm daemon --max-cpus-per-user)"},
		{"vms checked first", Quota{VMs: 1, MemoryMiB: 9999, CPUs: 99}, Quota{VMs: 1, MemoryMiB: 1, CPUs: 1}, req(1, 1024), "you have 1 VMs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := overQuota(tt.have, tt.q, tt.req)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant ErrQuota with %q", err, tt.want)
			}
		})
	}
}

// TestReserve_QuotaHoldsUnderConcurrentCreates (M7): 20 creates at once by one
// user with a quota of 3 VMs reserve exactly 3, counting VMs still being
// created; the rest are refused with ErrQuota and leave no record or lease.
// Another user, and the admin, are not counted against them.
func TestReserve_QuotaHoldsUnderConcurrentCreates(t *testing.T) {
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 1 << 30, nil }
	addUser(t, m, "u_alice", "alice@example.com")
	addUser(t, m, "u_bob", "bob@example.com")
	other := addVM(t, m, "bobs", "bbbb2222", api.StateRunning)
	other.Owner = "u_bob"
	m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutVM(other) })

	alice := Owner{ID: "u_alice", User: true, Quota: Quota{VMs: 3}}
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req := api.CreateVMRequest{Name: fmt.Sprintf("a%02d", i)}
			validate(&req)
			vm, _, err := reserveFor(t, m, alice, req)
			if err == nil {
				m.end(vm.Name)
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	ok, quota := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrQuota) && strings.Contains(err.Error(), "you have 3 VMs"):
			quota++
		default:
			t.Errorf("reserve: %v", err)
		}
	}
	if ok != 3 || quota != 17 {
		t.Fatalf("%d reserved, %d refused for the quota; want 3 and 17", ok, quota)
	}
	m.cfg.Store.View(func(tx *store.Tx) error {
		vms, _ := tx.VMs()
		leases, _ := tx.Leases()
		if len(vms) != 4 || len(leases) != 4 {
			t.Errorf("%d records and %d leases; want alice's 3 and bob's 1", len(vms), len(leases))
		}
		return nil
	})
	// The admin and bob are held to nothing of alice's.
	if _, _, err := reserveFor(t, m, Owner{ID: "admin"}, validReq("adm")); err != nil {
		t.Errorf("the admin's create: %v", err)
	}
	if _, _, err := reserveFor(t, m, Owner{ID: "u_bob", User: true, Quota: Quota{VMs: 2}}, validReq("bob2")); err != nil {
		t.Errorf("bob's second VM (quota 2): %v", err)
	}
}

// TestReserve_OwnerGone (L3): a create whose user was removed, or denied,
// after the request was authenticated is refused inside the reserve, and
// nothing is recorded.
func TestReserve_OwnerGone(t *testing.T) {
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 1 << 30, nil }
	if _, _, err := reserveFor(t, m, Owner{ID: "u_gone", User: true}, validReq("orphan")); !errors.Is(err, ErrOwnerGone) ||
		!strings.Contains(err.Error(), "your user was removed") {
		t.Errorf("reserve for a removed user = %v, want ErrOwnerGone", err)
	}
	addUser(t, m, "u_carol", "carol@other.org") // no rule lets other.org in
	if _, _, err := reserveFor(t, m, Owner{ID: "u_carol", User: true}, validReq("orphan")); !errors.Is(err, ErrOwnerGone) ||
		!strings.Contains(err.Error(), "carol@other.org may no longer use this host") {
		t.Errorf("reserve for a denied user = %v, want ErrOwnerGone", err)
	}
	if _, err := m.cfg.Store.GetVM("orphan"); !errors.Is(err, store.ErrNotFound) || m.isBusy("orphan") {
		t.Errorf("a refused reserve left a record (%v) or its name busy", err)
	}
}

func validReq(name string) api.CreateVMRequest {
	req := api.CreateVMRequest{Name: name}
	validate(&req)
	return req
}

// addUser stores a user, allowed by a rule for their email.
func addUser(t *testing.T, m *Manager, id, email string) {
	t.Helper()
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		if err := tx.PutUser(&store.User{ID: id, Email: email}); err != nil {
			return err
		}
		if strings.HasSuffix(email, "@example.com") {
			return tx.SetAccess(email, true)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// reserveFor runs the first step of a create for owner, as CreateFor does.
func reserveFor(t *testing.T, m *Manager, owner Owner, req api.CreateVMRequest) (*store.VM, *store.Op, error) {
	b, err := m.cfg.Bases.Current(context.Background())
	if err != nil {
		return nil, nil, err
	}
	ident, err := guest.NewIdentity(m.cfg.Key.PublicKey())
	if err != nil {
		return nil, nil, err
	}
	return m.reserve(owner, req, b.ID, ident, 0)
}

// TestReserve_Tombstone (L7): a destroyed VM's name may be taken again for
// 30 days only by its last owner or the admin; others get a conflict saying
// when it frees, and generated names avoid it. A failed create leaves none,
// and an old tombstone is pruned.
func TestReserve_Tombstone(t *testing.T) {
	ctx := context.Background()
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 1 << 30, nil }
	addUser(t, m, "u_alice", "alice@example.com")
	addUser(t, m, "u_bob", "bob@example.com")
	alice := Owner{ID: "u_alice", User: true}
	bob := Owner{ID: "u_bob", User: true}
	destroyed := func(name string, owner Owner) {
		t.Helper()
		vm, _, err := reserveFor(t, m, owner, validReq(name))
		if err != nil {
			t.Fatal(err)
		}
		m.end(vm.Name)
		if err := m.Destroy(ctx, name, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
	destroyed("shop", alice)
	_, _, err := reserveFor(t, m, bob, validReq("shop"))
	frees := time.Now().UTC().Add(store.TombstoneAge).Format("2006-01-02")
	if !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), `vm "shop": the name was given up on `) ||
		!strings.Contains(err.Error(), "stays reserved for its last owner until "+frees) || strings.Contains(err.Error(), "alice") {
		t.Fatalf("bob takes alice's destroyed name: %v", err)
	}
	// Its last owner may take it back; then it is simply hers.
	vm, _, err := reserveFor(t, m, alice, validReq("shop"))
	if err != nil {
		t.Fatalf("alice takes back her name: %v", err)
	}
	m.end(vm.Name)
	m.cfg.Store.View(func(tx *store.Tx) error {
		if _, err := tx.Tombstone("shop", time.Now()); err == nil {
			t.Error("the tombstone outlived the name's new VM")
		}
		return nil
	})
	// The admin may take any.
	destroyed("cafe", alice)
	if vm, _, err := reserveFor(t, m, Owner{ID: "admin"}, validReq("cafe")); err != nil {
		t.Errorf("the admin takes a tombstoned name: %v", err)
	} else {
		m.end(vm.Name)
	}

	// A failed create leaves no tombstone (it served nothing).
	vm, op, err := reserveFor(t, m, alice, validReq("failed"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.undoCreate(ctx, op); err != nil {
		t.Fatal(err)
	}
	m.end(vm.Name)
	if _, _, err := reserveFor(t, m, bob, validReq("failed")); err != nil {
		t.Errorf("a failed create's name: %v", err)
	}

	// With no hold (fcm daemon --name-hold 0) a name is free at once.
	m.cfg.NameHold = 0
	destroyed("free", alice)
	if vm, _, err := reserveFor(t, m, bob, validReq("free")); err != nil {
		t.Errorf("bob takes a name destroyed with no hold: %v", err)
	} else {
		m.end(vm.Name)
	}
	m.cfg.NameHold = store.TombstoneAge

	// After 30 days the name is anyone's, and the tombstone is pruned.
	destroyed("old", alice)
	later := time.Now().Add(store.TombstoneAge + time.Minute)
	m.cfg.Store.Update(func(tx *store.Tx) error {
		if _, err := tx.Tombstone("old", later); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("tombstone 30 days on: %v", err)
		}
		if err := tx.PruneTombstones(later); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Tombstone("old", time.Now()); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("tombstone after the prune: %v", err)
		}
		return nil
	})
	if vm, _, err := reserveFor(t, m, bob, validReq("old")); err != nil {
		t.Errorf("bob takes a name freed after 30 days: %v", err)
	} else {
		m.end(vm.Name)
	}
}
