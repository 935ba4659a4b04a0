package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestVMs_CacheFollowsEveryChange: the decoded VMs a list reuses always match
// what is committed, and a write transaction sees its own changes.
func TestVMs_CacheFollowsEveryChange(t *testing.T) {
	s, _ := openTest(t)
	names := func() []string {
		t.Helper()
		vms, err := s.ListVMs()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vms {
			out = append(out, v.Name+":"+v.State)
		}
		return out
	}
	mustUpdate := func(fn func(*Tx) error) {
		t.Helper()
		if err := s.Update(fn); err != nil {
			t.Fatal(err)
		}
	}
	mustUpdate(func(tx *Tx) error { return tx.InsertVM(&VM{ID: "a1", Name: "a", State: "running"}) })
	if got := names(); len(got) != 1 || got[0] != "a:running" {
		t.Fatalf("after insert: %v", got)
	}
	// A caller changing what it got does not change the next list.
	vms, _ := s.ListVMs()
	vms[0].State = "scribbled"
	if got := names(); got[0] != "a:running" {
		t.Fatalf("a caller's change leaked into the cache: %v", got)
	}
	mustUpdate(func(tx *Tx) error {
		vm, err := tx.VM("a")
		if err != nil {
			return err
		}
		vm.State = "stopped"
		if err := tx.PutVM(vm); err != nil {
			return err
		}
		// The write transaction sees its own change.
		vms, err := tx.VMs()
		if err != nil || len(vms) != 1 || vms[0].State != "stopped" {
			t.Errorf("inside the write: %v, %v", vms, err)
		}
		return nil
	})
	if got := names(); got[0] != "a:stopped" {
		t.Fatalf("after update: %v", got)
	}
	// A rolled-back change is not seen.
	s.Update(func(tx *Tx) error {
		tx.InsertVM(&VM{ID: "b1", Name: "b", State: "running"})
		tx.VMs()
		return errors.New("roll back")
	})
	if got := names(); len(got) != 1 {
		t.Fatalf("after a rollback: %v", got)
	}
	// A write that touches no VM leaves the cache valid; one that deletes does not.
	mustUpdate(func(tx *Tx) error { return tx.PutOp(&Op{ID: "x"}) })
	mustUpdate(func(tx *Tx) error { return tx.DeleteVM("a") })
	if got := names(); len(got) != 0 {
		t.Fatalf("after delete: %v", got)
	}
}

// TestVMs_CacheMatchesTheFile: after random creates, changes and deletes the
// VMs a list returns from memory are exactly those a fresh decode finds, and
// committed writes keep them current without a decode.
func TestVMs_CacheMatchesTheFile(t *testing.T) {
	s, _ := openTest(t)
	s.ListVMs()
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		name := fmt.Sprintf("vm-%02d", rnd.IntN(40))
		if rnd.IntN(4) == 0 { // a write of something else
			if err := s.Update(func(tx *Tx) error { return tx.PutOp(&Op{ID: name}) }); err != nil {
				t.Fatal(err)
			}
		}
		err := s.Update(func(tx *Tx) error {
			vm, err := tx.VM(name)
			switch {
			case errors.Is(err, ErrNotFound):
				return tx.InsertVM(&VM{ID: fmt.Sprintf("id%05d", i), Name: name, State: "running"})
			case err != nil:
				return err
			case rnd.IntN(3) == 0:
				return tx.DeleteVM(name)
			default:
				vm.State = fmt.Sprint("state-", i)
				return tx.PutVM(vm)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		current := s.vms.txid
		s.mu.Unlock()
		cached, err := s.ListVMs()
		if err != nil {
			t.Fatal(err)
		}
		var fresh []*VM
		s.db.View(func(btx *bolt.Tx) error {
			fresh, err = (&Tx{tx: btx}).VMs()
			if btx.ID() != current {
				t.Errorf("step %d: the decoded VMs are of transaction %d, the file is at %d", i, current, btx.ID())
			}
			return err
		})
		if !reflect.DeepEqual(cached, fresh) {
			t.Fatalf("step %d: cached %v, file %v", i, cached, fresh)
		}
	}
}
