package store

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// Token is an API credential. Only the SHA-256 of its secret is stored.
type Token struct {
	ID        string    `json:"id"`   // short public id, names the token (and owns VMs)
	Name      string    `json:"name"` // e.g. "admin"
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}

// NewSecret returns a random token secret: "fcm_" and 40 hex digits.
func NewSecret() string {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "fcm_" + hex.EncodeToString(b)
}

var secretRE = regexp.MustCompile(`^fcm_[0-9a-f]{40}$`)

// ValidSecret reports whether s has the form NewSecret makes: a hand-edited or
// truncated secret is refused rather than trusted.
func ValidSecret(s string) bool { return secretRE.MatchString(s) }

// Fingerprint names a secret in logs without revealing it: the first 8 hex
// digits of its SHA-256 (what the store keeps), so the same token is
// recognisable across log lines and a rotated one is told apart.
func Fingerprint(secret string) string { return hex.EncodeToString(hashSecret(secret)[:4]) }

func hashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// PutToken stores tok under the hash of secret.
func (t *Tx) PutToken(secret string, tok *Token) error {
	if tok.CreatedAt.IsZero() {
		tok.CreatedAt = time.Now().UTC()
	}
	return putJSON(t.tx.Bucket(bucketTokens), hex.EncodeToString(hashSecret(secret)), tok)
}

// TokenFor returns the token whose secret this is, or ErrNotFound. Every stored
// hash is compared in constant time, so the time taken says nothing of which
// bytes matched.
func (t *Tx) TokenFor(secret string) (*Token, error) {
	want := hashSecret(secret)
	var found []byte
	err := t.tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
		stored, err := hex.DecodeString(string(k))
		if err != nil {
			return nil
		}
		if subtle.ConstantTimeCompare(stored, want) == 1 {
			found = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("token: %w", ErrNotFound)
	}
	var tok Token
	if err := json.Unmarshal(found, &tok); err != nil {
		return nil, err
	}
	return &tok, nil
}

// Tokens lists the stored tokens (without secrets, which are not kept).
func (t *Tx) Tokens() ([]*Token, error) {
	var out []*Token
	err := t.tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
		var tok Token
		if err := json.Unmarshal(v, &tok); err != nil {
			return err
		}
		out = append(out, &tok)
		return nil
	})
	return out, err
}

// SetAdminToken makes secret the one admin token: every other token with
// Admin set is deleted, and secret is stored (as ID "admin") unless it already
// is. It returns how many other admin tokens were removed.
func (t *Tx) SetAdminToken(secret string) (removed int, err error) {
	b := t.tx.Bucket(bucketTokens)
	keep := hex.EncodeToString(hashSecret(secret))
	var drop [][]byte
	found := false
	err = b.ForEach(func(k, v []byte) error {
		var tok Token
		if err := json.Unmarshal(v, &tok); err != nil {
			return err
		}
		switch {
		case string(k) == keep:
			found = tok.Admin
		case tok.Admin:
			drop = append(drop, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	if !found {
		err = t.PutToken(secret, &Token{ID: "admin", Name: "admin", Admin: true})
	}
	return len(drop), err
}
