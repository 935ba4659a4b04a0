package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestStore_Keys(t *testing.T) {
	s, _ := openTest(t)
	k1 := &Key{Fingerprint: "SHA256:one", Owner: "admin", Type: "ssh-ed25519", Comment: "ada@laptop", Line: "ssh-ed25519 AAAA1"}
	k2 := &Key{Fingerprint: "SHA256:two", Owner: "alice", Type: "ssh-ed25519", Line: "ssh-ed25519 AAAA2", AddedAt: time.Now().Add(time.Minute)}
	for _, k := range []*Key{k1, k2} {
		if err := s.Update(func(tx *Tx) error { return tx.InsertKey(k) }); err != nil {
			t.Fatal(err)
		}
	}
	if k1.AddedAt.IsZero() {
		t.Error("InsertKey did not set AddedAt")
	}
	t.Run("added twice is a conflict", func(t *testing.T) {
		for owner, want := range map[string]string{"admin": "already added to your account", "alice": "already added to another account on this host; remove it there first"} {
			again := &Key{Fingerprint: "SHA256:one", Owner: owner}
			err := s.Update(func(tx *Tx) error { return tx.InsertKey(again) })
			if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), want) {
				t.Errorf("InsertKey again by %s = %v, want ErrExists saying %q", owner, err, want)
			}
		}
	})
	t.Run("lookup by fingerprint", func(t *testing.T) {
		var got *Key
		err := s.View(func(tx *Tx) (err error) { got, err = tx.KeyByFingerprint("SHA256:one"); return })
		if err != nil || got.Owner != "admin" || got.Comment != "ada@laptop" || got.Line != "ssh-ed25519 AAAA1" {
			t.Errorf("KeyByFingerprint = %+v, %v", got, err)
		}
		err = s.View(func(tx *Tx) (err error) { _, err = tx.KeyByFingerprint("SHA256:nope"); return })
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown fingerprint: %v", err)
		}
	})
	t.Run("list by owner", func(t *testing.T) {
		for owner, want := range map[string][]string{"admin": {"SHA256:one"}, "alice": {"SHA256:two"}, "bob": nil, "": {"SHA256:one", "SHA256:two"}} {
			var keys []*Key
			if err := s.View(func(tx *Tx) (err error) { keys, err = tx.Keys(owner); return }); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, k := range keys {
				got = append(got, k.Fingerprint)
			}
			if len(got) != len(want) || (len(got) > 0 && got[0] != want[0]) {
				t.Errorf("Keys(%q) = %v, want %v", owner, got, want)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := s.Update(func(tx *Tx) error { return tx.DeleteKey("SHA256:one") }); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(func(tx *Tx) error { return tx.DeleteKey("SHA256:one") }); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete = %v", err)
		}
		// Gone, it may be added again.
		if err := s.Update(func(tx *Tx) error { return tx.InsertKey(&Key{Fingerprint: "SHA256:one", Owner: "alice"}) }); err != nil {
			t.Errorf("re-add after delete: %v", err)
		}
	})
	t.Run("token by id", func(t *testing.T) {
		s.Update(func(tx *Tx) error { return tx.PutToken(NewSecret(), &Token{ID: "alice", Name: "alice"}) })
		var tok *Token
		if err := s.View(func(tx *Tx) (err error) { tok, err = tx.TokenByID("alice"); return }); err != nil || tok.Name != "alice" {
			t.Errorf("TokenByID = %+v, %v", tok, err)
		}
		if err := s.View(func(tx *Tx) (err error) { _, err = tx.TokenByID("bob"); return }); !errors.Is(err, ErrNotFound) {
			t.Errorf("TokenByID(bob) = %v", err)
		}
	})
}
