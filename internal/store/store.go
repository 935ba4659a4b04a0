// Package store is fcm's durable state in one bbolt file: VMs, IP leases, API
// tokens (SHA-256 hashes only) and the records of operations in progress. Every
// change is a transaction, so a daemon killed at any moment leaves a consistent
// file that says what was being done.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors callers branch on.
var (
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrExhausted = errors.New("address pool exhausted")
	ErrLocked    = errors.New("store is locked by another process")
)

var (
	bucketVMs    = []byte("vms")    // name -> VM
	bucketIDs    = []byte("vm_ids") // id -> name
	bucketLeases = []byte("leases") // ip -> vm id
	bucketTokens = []byte("tokens") // sha256(secret) hex -> Token
	bucketOps    = []byte("ops")    // op id -> Op
	allBuckets   = [][]byte{bucketVMs, bucketIDs, bucketLeases, bucketTokens, bucketOps, bucketReleases, bucketConfig, bucketEnvs, bucketKeys, bucketUsers, bucketAccess, bucketTombstones, bucketEvents}
)

// VM is the stored record of one VM.
type VM struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Owner     string `json:"owner"` // the token (later, user) that created it
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	IP        string `json:"ip"`
	MAC       string `json:"mac"`
	Tap       string `json:"tap"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	SwapMiB   int    `json:"swap_mib"`
	DiskBytes int64  `json:"disk_bytes"`
	Port      int    `json:"port"`
	NoExpose  bool   `json:"no_expose,omitempty"` // no route through the edge
	// Domains are its custom domains (fcm domains add), each one VM's only;
	// replaced whole, never changed in place.
	Domains    []string `json:"domains,omitempty"`
	Hypervisor string   `json:"hypervisor"`
	PID        int      `json:"pid,omitempty"`
	HostKey    string   `json:"host_key"`
	// Base is the id of the guest image the VM's root is made from, and Layout
	// how: "overlay" (the base read-only, the VM's own disk above it), or ""
	// for a VM made before bases were shared (one disk holding a full copy).
	Base      string    `json:"base,omitempty"`
	Layout    string    `json:"layout,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// Desired is what the owner last asked for (api.DesiredRunning or
	// api.DesiredStopped); "" in a record made before it existed, read as
	// DesiredState says.
	Desired string `json:"desired,omitempty"`
	// Deaths are when its hypervisor died by itself, the last 10 minutes'
	// worth: the restart backoff and the give-up count them.
	Deaths []time.Time `json:"deaths,omitempty"`
	// SuspendedAt is when it was suspended (state suspended).
	SuspendedAt time.Time `json:"suspended_at,omitempty"`
	// SuspendAfter is how long it may sit idle before the daemon suspends
	// it; 0: never by itself.
	SuspendAfter time.Duration `json:"suspend_after,omitempty"`
	// RestartAt is when a VM in state restarting is booted again.
	RestartAt time.Time `json:"restart_at,omitempty"`
	// Events are the last MaxEvents things that happened to it by themselves.
	Events []Event `json:"events,omitempty"`
	// LastCheckpoint is the number of its newest checkpoint (v<N>); numbers
	// are never used twice, even after a checkpoint is removed.
	LastCheckpoint int `json:"last_checkpoint,omitempty"`
}

// Event is one thing that happened to a VM without its owner asking.
type Event struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail,omitempty"`
}

// MaxEvents is how many events a VM record keeps.
const MaxEvents = 20

// AddEvent appends an event, dropping the oldest beyond MaxEvents.
func (v *VM) AddEvent(at time.Time, kind, detail string) {
	v.Events = append(v.Events, Event{At: at.UTC(), Kind: kind, Detail: detail})
	if n := len(v.Events); n > MaxEvents {
		v.Events = append([]Event(nil), v.Events[n-MaxEvents:]...)
	}
}

// DesiredState is what the owner last asked for; a record from before the
// field existed wants running when it was running (or on its way).
func (v *VM) DesiredState() string {
	if v.Desired != "" {
		return v.Desired
	}
	switch v.State {
	case "running", "starting", "creating", "restarting", "paused", "suspending", "suspended", "waking":
		return "running"
	}
	return "stopped"
}

// Op records an operation in progress: its kind, its VM, and the steps begun so
// far (a step is recorded before its side effect happens, so undoing every
// recorded step after a crash undoes everything that may have happened).
type Op struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"` // create, start, stop, destroy
	VMName    string    `json:"vm_name"`
	VMID      string    `json:"vm_id"`
	Steps     []string  `json:"steps"`
	StartedAt time.Time `json:"started_at"`
}

// Store is the open database.
type Store struct {
	db *bolt.DB

	// vms is every VM as decoded at one committed transaction: listing VMs
	// (GET /v1/vms, every create's memory check) decodes nothing while no
	// write has touched them since.
	mu  sync.Mutex
	vms vmCache
}

type vmCache struct {
	txid int // the committed transaction the list is of; 0: none
	list []VM
}

// Open opens (creating if needed) the database at path. Another process holding
// it makes Open fail with ErrLocked after timeout.
func Open(path string, timeout time.Duration) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return migrateApps(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Update runs fn in a read-write transaction; an error from fn rolls it back.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(btx *bolt.Tx) error {
		t := &Tx{tx: btx, s: s}
		if err := fn(t); err != nil {
			return err
		}
		if t.changed == nil {
			// No VM changed: the decoded VMs stay those of the new state.
			txid := btx.ID()
			btx.OnCommit(func() { s.applyCommitted(txid, nil) })
		}
		return nil
	})
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, s: s}) })
}

// GetVM returns one VM by name.
func (s *Store) GetVM(name string) (*VM, error) {
	var vm *VM
	err := s.View(func(tx *Tx) (err error) { vm, err = tx.VM(name); return })
	return vm, err
}

// ListVMs returns every VM, sorted by name.
func (s *Store) ListVMs() ([]*VM, error) {
	var vms []*VM
	err := s.View(func(tx *Tx) (err error) { vms, err = tx.VMs(); return })
	return vms, err
}

// UpdateVM changes one VM in a transaction and returns the result.
func (s *Store) UpdateVM(name string, fn func(*VM) error) (*VM, error) {
	var vm *VM
	err := s.Update(func(tx *Tx) error {
		var err error
		if vm, err = tx.VM(name); err != nil {
			return err
		}
		if err := fn(vm); err != nil {
			return err
		}
		return tx.PutVM(vm)
	})
	return vm, err
}

// Tx is a transaction with fcm's typed accessors.
type Tx struct {
	tx *bolt.Tx
	s  *Store
	// vmsChanged: this (write) transaction has written a VM record, so what
	// it sees of them is no longer the last committed state. changed holds
	// those records (nil: deleted), applied to the store's decoded VMs when
	// the transaction commits.
	vmsChanged bool
	changed    map[string]*VM
}

// changeVM notes a change of VM name (vm nil: deleted) for the store's
// decoded VMs.
func (t *Tx) changeVM(name string, vm *VM) {
	t.vmsChanged = true
	if t.s == nil {
		return
	}
	if t.changed == nil {
		t.changed = map[string]*VM{}
		txid := t.tx.ID() // bbolt forgets it before the commit handlers run
		t.tx.OnCommit(func() { t.s.applyCommitted(txid, t.changed) })
	}
	if vm != nil {
		c := *vm
		vm = &c
	}
	t.changed[name] = vm
}

// applyCommitted brings the decoded VMs from the transaction before txid to
// txid, whose VM changes were changed.
func (s *Store) applyCommitted(txid int, changed map[string]*VM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vms.txid != txid-1 {
		s.vms = vmCache{} // decoded from an older state: decode again
		return
	}
	if len(changed) == 0 {
		s.vms.txid = txid
		return
	}
	list := make([]VM, 0, len(s.vms.list)+len(changed))
	for _, v := range s.vms.list {
		if c, ok := changed[v.Name]; ok {
			if c != nil {
				list = append(list, *c)
			}
			delete(changed, v.Name)
			continue
		}
		list = append(list, v)
	}
	for _, c := range changed {
		if c != nil {
			list = append(list, *c)
		}
	}
	slices.SortFunc(list, func(a, b VM) int { return strings.Compare(a.Name, b.Name) })
	s.vms = vmCache{txid: txid, list: list}
}

// snapshot is the committed transaction whose data tx sees: its own id for a
// read, the one before for a write that has not changed the VMs yet; 0 when
// tx sees VMs no committed transaction holds.
func (t *Tx) snapshot() int {
	if !t.tx.Writable() {
		return t.tx.ID()
	}
	if t.vmsChanged {
		return 0
	}
	return t.tx.ID() - 1
}

func getJSON(b *bolt.Bucket, key string, v any) error {
	data := b.Get([]byte(key))
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// VM returns the VM named name, or ErrNotFound.
func (t *Tx) VM(name string) (*VM, error) {
	var vm VM
	if err := getJSON(t.tx.Bucket(bucketVMs), name, &vm); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("vm %q: %w", name, ErrNotFound)
		}
		return nil, err
	}
	return &vm, nil
}

// VMByID returns the VM with the given id, or ErrNotFound.
func (t *Tx) VMByID(id string) (*VM, error) {
	name := t.tx.Bucket(bucketIDs).Get([]byte(id))
	if name == nil {
		return nil, fmt.Errorf("vm id %q: %w", id, ErrNotFound)
	}
	return t.VM(string(name))
}

// VMs returns every VM, sorted by name (bbolt keeps keys sorted). The
// records are the caller's to change.
func (t *Tx) VMs() ([]*VM, error) {
	snap := t.snapshot()
	if snap != 0 && t.s != nil {
		t.s.mu.Lock()
		c := t.s.vms
		t.s.mu.Unlock()
		if c.txid == snap {
			return copyVMs(c.list), nil
		}
	}
	var list []VM
	err := t.tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
		var vm VM
		if err := json.Unmarshal(v, &vm); err != nil {
			return fmt.Errorf("vm %q: %w", k, err)
		}
		list = append(list, vm)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if snap != 0 && t.s != nil {
		t.s.mu.Lock()
		if snap > t.s.vms.txid {
			t.s.vms = vmCache{txid: snap, list: list}
		}
		t.s.mu.Unlock()
	}
	return copyVMs(list), nil
}

func copyVMs(list []VM) []*VM {
	out := make([]*VM, len(list))
	for i := range list {
		v := list[i]
		out[i] = &v
	}
	return out
}

// NameTaken reports whether a VM has this name.
func (t *Tx) NameTaken(name string) bool {
	return t.tx.Bucket(bucketVMs).Get([]byte(name)) != nil
}

// InsertVM adds a new VM; a taken name or id is ErrExists.
func (t *Tx) InsertVM(vm *VM) error {
	if t.NameTaken(vm.Name) {
		return fmt.Errorf("vm %q: %w", vm.Name, ErrExists)
	}
	if t.tx.Bucket(bucketIDs).Get([]byte(vm.ID)) != nil {
		return fmt.Errorf("vm id %q: %w", vm.ID, ErrExists)
	}
	if err := t.tx.Bucket(bucketIDs).Put([]byte(vm.ID), []byte(vm.Name)); err != nil {
		return err
	}
	return t.PutVM(vm)
}

// PutVM writes an existing VM back.
func (t *Tx) PutVM(vm *VM) error {
	vm.UpdatedAt = time.Now().UTC()
	if err := putJSON(t.tx.Bucket(bucketVMs), vm.Name, vm); err != nil {
		return err
	}
	t.changeVM(vm.Name, vm)
	return nil
}

// DeleteVM removes a VM record and its id (not its leases: see Release).
func (t *Tx) DeleteVM(name string) error {
	vm, err := t.VM(name)
	if err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketIDs).Delete([]byte(vm.ID)); err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketVMs).Delete([]byte(name)); err != nil {
		return err
	}
	t.changeVM(name, nil)
	return nil
}

// PutOp records or updates an operation.
func (t *Tx) PutOp(op *Op) error { return putJSON(t.tx.Bucket(bucketOps), op.ID, op) }

// DeleteOp removes a finished operation; a missing one is fine.
func (t *Tx) DeleteOp(id string) error { return t.tx.Bucket(bucketOps).Delete([]byte(id)) }

// Ops lists the operations in progress (after a crash: the interrupted ones).
func (t *Tx) Ops() ([]*Op, error) {
	var ops []*Op
	err := t.tx.Bucket(bucketOps).ForEach(func(k, v []byte) error {
		var op Op
		if err := json.Unmarshal(v, &op); err != nil {
			return fmt.Errorf("op %q: %w", k, err)
		}
		ops = append(ops, &op)
		return nil
	})
	return ops, err
}
