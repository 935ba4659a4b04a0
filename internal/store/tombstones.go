package store

import (
	"encoding/json"
	"fmt"
	"time"
)

var bucketTombstones = []byte("tombstones") // vm name -> Tombstone

// TombstoneAge is how long a destroyed VM's name stays its last owner's by
// default: its URL https://<name>.<domain> may still be linked from elsewhere
// (OAuth redirects, webhooks, reset links), so nobody else may take it at once.
const TombstoneAge = 30 * 24 * time.Hour

// Tombstone records that a VM of this name was destroyed, whose it was and
// when.
type Tombstone struct {
	Name        string    `json:"name"`
	Owner       string    `json:"owner"` // as VM.Owner: a user's id, or the admin token's
	VMID        string    `json:"vm_id"`
	DestroyedAt time.Time `json:"destroyed_at"`
	Until       time.Time `json:"until"` // when anyone may take the name
}

// Frees is when the name may be taken by anyone.
func (ts *Tombstone) Frees() time.Time { return ts.Until }

// PutTombstone records the destroy of vm at now, its name held for hold, and
// prunes tombstones no longer in force.
func (t *Tx) PutTombstone(vm *VM, now time.Time, hold time.Duration) error {
	if err := t.PruneTombstones(now); err != nil {
		return err
	}
	return putJSON(t.tx.Bucket(bucketTombstones), vm.Name, &Tombstone{Name: vm.Name, Owner: vm.Owner, VMID: vm.ID,
		DestroyedAt: now.UTC(), Until: now.Add(hold).UTC()})
}

// Tombstone returns the tombstone of name that is still in force at now, or
// ErrNotFound.
func (t *Tx) Tombstone(name string, now time.Time) (*Tombstone, error) {
	var ts Tombstone
	if err := getJSON(t.tx.Bucket(bucketTombstones), name, &ts); err != nil {
		return nil, fmt.Errorf("tombstone %q: %w", name, err)
	}
	if !now.Before(ts.Frees()) {
		return nil, fmt.Errorf("tombstone %q expired: %w", name, ErrNotFound)
	}
	return &ts, nil
}

// DeleteTombstone forgets name's tombstone (its last owner took it again).
func (t *Tx) DeleteTombstone(name string) error {
	return t.tx.Bucket(bucketTombstones).Delete([]byte(name))
}

// PruneTombstones removes the tombstones no longer in force at now.
func (t *Tx) PruneTombstones(now time.Time) error {
	b := t.tx.Bucket(bucketTombstones)
	var old [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var ts Tombstone
		if json.Unmarshal(v, &ts) != nil || !now.Before(ts.Frees()) {
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
