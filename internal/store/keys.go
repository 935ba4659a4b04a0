package store

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

var bucketKeys = []byte("keys") // fingerprint (SHA256:...) -> Key

// Key is an SSH public key that may push over git's SSH transport on behalf of
// its owner.
type Key struct {
	Fingerprint string    `json:"fingerprint"`    // ssh.FingerprintSHA256, "SHA256:..."
	Owner       string    `json:"owner"`          // the token (later, user) id it acts for
	Type        string    `json:"type"`           // ssh-ed25519, ssh-rsa, ...
	Comment     string    `json:"comment"`        // the authorized_keys line's comment
	Line        string    `json:"authorized_key"` // "<type> <base64>", without the comment
	AddedAt     time.Time `json:"added_at"`
}

// InsertKey adds a key; a fingerprint already stored (for anyone) is
// ErrExists, whose message says whether k.Owner or another account has it.
// Callers tell that only to someone who has proven they hold the key (the
// daemon asks for a signature first): to anyone else it would say whether a
// public key is registered here.
func (t *Tx) InsertKey(k *Key) error {
	b := t.tx.Bucket(bucketKeys)
	if data := b.Get([]byte(k.Fingerprint)); data != nil {
		var old Key
		if json.Unmarshal(data, &old) == nil && old.Owner == k.Owner {
			return fmt.Errorf("key %s is already added to your account (see fcm keys ls): %w", k.Fingerprint, ErrExists)
		}
		return fmt.Errorf("key %s is already added to another account on this host; remove it there first: %w", k.Fingerprint, ErrExists)
	}
	if k.AddedAt.IsZero() {
		k.AddedAt = time.Now().UTC()
	}
	return putJSON(b, k.Fingerprint, k)
}

// KeyByFingerprint returns the key with this fingerprint, or ErrNotFound.
func (t *Tx) KeyByFingerprint(fp string) (*Key, error) {
	var k Key
	if err := getJSON(t.tx.Bucket(bucketKeys), fp, &k); err != nil {
		return nil, fmt.Errorf("key %s: %w", fp, err)
	}
	return &k, nil
}

// Keys lists the keys of owner (every key when owner is ""), oldest first.
func (t *Tx) Keys(owner string) ([]*Key, error) {
	var out []*Key
	err := t.tx.Bucket(bucketKeys).ForEach(func(k, v []byte) error {
		var key Key
		if err := json.Unmarshal(v, &key); err != nil {
			return fmt.Errorf("key %s: %w", k, err)
		}
		if owner == "" || key.Owner == owner {
			out = append(out, &key)
		}
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].AddedAt.Before(out[j].AddedAt) })
	return out, err
}

// DeleteKey removes the key with this fingerprint; a missing one is ErrNotFound.
func (t *Tx) DeleteKey(fp string) error {
	b := t.tx.Bucket(bucketKeys)
	if b.Get([]byte(fp)) == nil {
		return fmt.Errorf("key %s: %w", fp, ErrNotFound)
	}
	return b.Delete([]byte(fp))
}

// TokenByID returns the token with this id (keys and VMs name their owner by
// it), or ErrNotFound.
func (t *Tx) TokenByID(id string) (*Token, error) {
	toks, err := t.Tokens()
	if err != nil {
		return nil, err
	}
	for _, tok := range toks {
		if tok.ID == id {
			return tok, nil
		}
	}
	return nil, fmt.Errorf("token %q: %w", id, ErrNotFound)
}
