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
	ID         string    `json:"id"`   // short public id ("admin", "t_0123abcd4567")
	Name       string    `json:"name"` // e.g. "admin", "fcm login"
	Admin      bool      `json:"admin"`
	User       string    `json:"user,omitempty"` // the user it acts for; "" for the admin token
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitempty"` // zero: never (the admin token)
	// Parent is the id of the token this one was derived from (a web
	// session made from a pasted token): it acts as that token and ends
	// with it.
	Parent string `json:"parent,omitempty"`
}

// Owner is who the token acts for, as VMs and keys name their owner: the
// user's id, or (for a token of no user: the admin token) the token's own
// id, or its parent's for a derived one.
func (tok *Token) Owner() string {
	switch {
	case tok.User != "":
		return tok.User
	case tok.Parent != "":
		return tok.Parent
	}
	return tok.ID
}

// Expired reports whether the token has an expiry and it passed at now.
func (tok *Token) Expired(now time.Time) bool {
	return !tok.ExpiresAt.IsZero() && now.After(tok.ExpiresAt)
}

// NewTokenID returns a public id for a new token: "t_" and 12 hex digits.
func NewTokenID() string { return "t_" + randomHex(6) }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// NewSecret returns a random token secret: "fcm_" and 40 hex digits.
func NewSecret() string { return "fcm_" + randomHex(20) }

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

// Authenticate returns the token whose secret this is, and its user (nil for
// the admin token). A token whose user was removed, or whose email the
// allow-list no longer lets in, is refused like an unknown one: ErrNotFound.
func (t *Tx) Authenticate(secret string) (*Token, *User, error) {
	tok, err := t.TokenFor(secret)
	if err != nil {
		return nil, nil, err
	}
	if tok.Expired(time.Now()) {
		return nil, nil, fmt.Errorf("token %s expired: %w", tok.ID, ErrNotFound)
	}
	if tok.Parent != "" {
		parent, err := t.TokenByID(tok.Parent)
		if err != nil || parent.Expired(time.Now()) {
			return nil, nil, fmt.Errorf("token %s: the token it came from is gone: %w", tok.ID, ErrNotFound)
		}
	}
	if tok.User == "" {
		return tok, nil, nil
	}
	u, err := t.activeUser(tok.User)
	if err != nil {
		return nil, nil, err
	}
	return tok, u, nil
}

// Acting returns a token standing for owner (a user's id or "admin"), for
// credentials that name their owner rather than carry a token: SSH keys. An
// owner that is gone or no longer allowed is ErrNotFound.
func (t *Tx) Acting(owner string) (*Token, error) {
	if _, err := t.activeUser(owner); err == nil {
		return &Token{User: owner}, nil
	}
	return t.TokenByID(owner)
}

// TouchToken records that the token with this secret was used at.
func (t *Tx) TouchToken(secret string, at time.Time) error {
	b := t.tx.Bucket(bucketTokens)
	key := hex.EncodeToString(hashSecret(secret))
	var tok Token
	if err := getJSON(b, key, &tok); err != nil {
		return err
	}
	tok.LastUsedAt = at.UTC()
	return putJSON(b, key, &tok)
}

// DeleteTokens removes every token for which match is true and returns them.
func (t *Tx) DeleteTokens(match func(*Token) bool) ([]*Token, error) {
	b := t.tx.Bucket(bucketTokens)
	var keys [][]byte
	var gone []*Token
	err := b.ForEach(func(k, v []byte) error {
		var tok Token
		if err := json.Unmarshal(v, &tok); err != nil {
			return err
		}
		if match(&tok) {
			keys = append(keys, append([]byte(nil), k...))
			gone = append(gone, &tok)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return gone, nil
}

// PurgeExpiredTokens removes the tokens that expired by now, and those
// derived from a token that is gone, and returns how many went.
func (t *Tx) PurgeExpiredTokens(now time.Time) (int, error) {
	toks, err := t.Tokens()
	if err != nil {
		return 0, err
	}
	live := map[string]bool{}
	for _, tok := range toks {
		if !tok.Expired(now) {
			live[tok.ID] = true
		}
	}
	gone, err := t.DeleteTokens(func(tok *Token) bool {
		return tok.Expired(now) || tok.Parent != "" && !live[tok.Parent]
	})
	return len(gone), err
}
