package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

var (
	bucketUsers  = []byte("users")  // user id -> User
	bucketAccess = []byte("access") // pattern -> AccessRule
	bucketBans   = []byte("bans")   // issuer "\x00" subject -> Ban; made by the first ban
)

// Ban keeps a removed user's account (issuer and subject) out, whatever the
// allow-list says, until the admin allows their email again.
type Ban struct {
	Issuer  string    `json:"issuer"`
	Subject string    `json:"subject"`
	Email   string    `json:"email"` // at removal: `users allow <email>` lifts the ban
	At      time.Time `json:"at"`
}

// User is a person who logged in with OIDC: an issuer and subject (what the
// provider vouches for), with the email and name it gave at the last login.
type User struct {
	ID      string `json:"id"` // "u_" and 12 hex digits; owns VMs and keys
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
	Email   string `json:"email"`
	Name    string `json:"name"`
	// HostedDomain is Google's "hd" claim at the last login: the Workspace
	// domain that manages the account ("" for a consumer account).
	HostedDomain string    `json:"hd,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	LastLoginAt  time.Time `json:"last_login_at"`
}

// NewUserID returns an id for a new user.
func NewUserID() string { return "u_" + randomHex(6) }

// AccessRule lets in (Allow) or keeps out the emails a pattern matches: one
// email, "@domain", or "*". Flag rules come from the daemon's --allow and are
// replaced at each start; the others were added through the API.
type AccessRule struct {
	Pattern string `json:"pattern"`
	Allow   bool   `json:"allow"`
	Flag    bool   `json:"flag,omitempty"`
}

// NormalizePattern checks an allow-list pattern and returns it in the form
// stored (lower case): "alice@example.com", "@example.com" or "*".
func NormalizePattern(p string) (string, error) {
	p = asciiLower(strings.TrimSpace(p))
	bad := fmt.Errorf("%q is not an email, @domain or *", p)
	if !isASCII(p) {
		return "", fmt.Errorf("%q: only ASCII emails and domains (an internationalized domain in its xn-- form)", p)
	}
	switch {
	case p == "*":
		return p, nil
	case strings.HasPrefix(p, "@"):
		if !validDomain(p[1:]) {
			return "", bad
		}
		return p, nil
	}
	local, domain, ok := strings.Cut(p, "@")
	if !ok || local == "" || strings.Contains(domain, "@") || strings.ContainsAny(local, " \t<>()[],;:\"") || !validDomain(domain) {
		return "", bad
	}
	return p, nil
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// GoogleIssuer is Google's OpenID issuer, whose "hd" claim @domain rules check.
const GoogleIssuer = "https://accounts.google.com"

// AllowedUser decides whether rules let u in, as Allowed does for its email;
// and when an @domain rule decides for a Google account, only if Google says
// that domain manages it (hd == domain): a consumer account that merely
// verified a work address once is not the domain's.
func AllowedUser(rules []*AccessRule, u *User) bool {
	ok, by := allowedBy(rules, u.Email)
	if ok && strings.HasPrefix(by, "@") && u.Issuer == GoogleIssuer {
		return u.HostedDomain == by[1:]
	}
	return ok
}

// Allowed decides whether rules let email in: the rule for the email itself
// outranks the one for its @domain, which outranks "*"; at one rank a deny
// outranks an allow. No matching rule: refused.
func Allowed(rules []*AccessRule, email string) bool {
	ok, _ := allowedBy(rules, email)
	return ok
}

// allowedBy is Allowed, and the pattern that decided ("" for none).
func allowedBy(rules []*AccessRule, email string) (bool, string) {
	email, ok := NormalEmail(email)
	if !ok {
		return false, ""
	}
	_, domain, _ := strings.Cut(email, "@")
	for _, pattern := range []string{email, "@" + domain, "*"} {
		found, allow := false, true
		for _, r := range rules {
			if r.Pattern == pattern {
				found = true
				allow = allow && r.Allow
			}
		}
		if found {
			return allow, pattern
		}
	}
	return false, ""
}

// NormalEmail is email as fcm compares it: ASCII only, lower-cased byte by
// byte (no Unicode case folding: "\u212A" is not "k"), with exactly one "@"
// between a local part and a domain. ok is false for anything else, which no
// rule matches.
func NormalEmail(email string) (string, bool) {
	if !isASCII(email) || strings.Count(email, "@") != 1 {
		return "", false
	}
	email = asciiLower(email)
	local, domain, _ := strings.Cut(email, "@")
	return email, local != "" && domain != ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// asciiLower lowers A-Z only.
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

// AccessRules lists the allow-list, flag rules first, each group by pattern.
func (t *Tx) AccessRules() ([]*AccessRule, error) {
	var out []*AccessRule
	err := t.tx.Bucket(bucketAccess).ForEach(func(k, v []byte) error {
		var r AccessRule
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("access rule %s: %w", k, err)
		}
		out = append(out, &r)
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Flag && !out[j].Flag })
	return out, err
}

// accessKey keys flag rules apart from API rules of the same pattern, so
// either may exist without replacing the other.
func accessKey(r *AccessRule) string {
	if r.Flag {
		return "flag:" + r.Pattern
	}
	return "api:" + r.Pattern
}

// SetFlagRules replaces the flag rules with allow rules for patterns.
func (t *Tx) SetFlagRules(patterns []string) error {
	b := t.tx.Bucket(bucketAccess)
	var old [][]byte
	b.ForEach(func(k, _ []byte) error {
		if strings.HasPrefix(string(k), "flag:") {
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	for _, p := range patterns {
		r := &AccessRule{Pattern: p, Allow: true, Flag: true}
		if err := putJSON(b, accessKey(r), r); err != nil {
			return err
		}
	}
	return nil
}

// SetAccess adds or replaces the API rule for pattern. Allowing an email
// lifts the bans of removed users who had it.
func (t *Tx) SetAccess(pattern string, allow bool) error {
	r := &AccessRule{Pattern: pattern, Allow: allow}
	if err := putJSON(t.tx.Bucket(bucketAccess), accessKey(r), r); err != nil {
		return err
	}
	if b := t.tx.Bucket(bucketBans); allow && b != nil {
		var lift [][]byte
		b.ForEach(func(k, v []byte) error {
			var ban Ban
			if json.Unmarshal(v, &ban) == nil && ban.Email == pattern {
				lift = append(lift, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range lift {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

func banKey(issuer, subject string) string { return issuer + "\x00" + subject }

// Banned returns the ban on the account issuer knows as subject, or nil.
func (t *Tx) Banned(issuer, subject string) (*Ban, error) {
	b := t.tx.Bucket(bucketBans)
	if b == nil {
		return nil, nil
	}
	var ban Ban
	if err := getJSON(b, banKey(issuer, subject), &ban); errors.Is(err, ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return &ban, nil
}

// Allowed reports whether the stored rules let email in.
func (t *Tx) Allowed(email string) (bool, error) {
	rules, err := t.AccessRules()
	if err != nil {
		return false, err
	}
	return Allowed(rules, email), nil
}

// AllowedUser reports whether the stored rules let u in (see AllowedUser).
func (t *Tx) AllowedUser(u *User) (bool, error) {
	rules, err := t.AccessRules()
	if err != nil {
		return false, err
	}
	return AllowedUser(rules, u), nil
}

// User returns the user with this id, or ErrNotFound.
func (t *Tx) User(id string) (*User, error) {
	var u User
	if err := getJSON(t.tx.Bucket(bucketUsers), id, &u); err != nil {
		return nil, fmt.Errorf("user %q: %w", id, err)
	}
	return &u, nil
}

// activeUser returns the user with this id if the allow-list lets them in.
func (t *Tx) activeUser(id string) (*User, error) {
	u, err := t.User(id)
	if err != nil {
		return nil, err
	}
	ok, err := t.AllowedUser(u)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("user %s is not allowed: %w", u.Email, ErrNotFound)
	}
	return u, nil
}

// Users lists every user, by email.
func (t *Tx) Users() ([]*User, error) {
	var out []*User
	err := t.tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
		var u User
		if err := json.Unmarshal(v, &u); err != nil {
			return fmt.Errorf("user %s: %w", k, err)
		}
		out = append(out, &u)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Email < out[j].Email })
	return out, err
}

// UserBySubject returns the user the provider issuer knows as subject, or
// ErrNotFound.
func (t *Tx) UserBySubject(issuer, subject string) (*User, error) {
	users, err := t.Users()
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		if u.Issuer == issuer && u.Subject == subject {
			return u, nil
		}
	}
	return nil, fmt.Errorf("user %s at %s: %w", subject, issuer, ErrNotFound)
}

// PutUser stores u (new or changed).
func (t *Tx) PutUser(u *User) error {
	if u.CreatedAt.IsZero() {
		u.CreatedAt = time.Now().UTC()
	}
	return putJSON(t.tx.Bucket(bucketUsers), u.ID, u)
}

// DeleteUser removes the user with this id, with their tokens and SSH keys,
// and returns how many tokens were revoked. Their VMs are the caller's to
// deal with first.
func (t *Tx) DeleteUser(id string) (tokens int, err error) {
	if _, err := t.User(id); err != nil {
		return 0, err
	}
	gone, err := t.DeleteTokens(func(tok *Token) bool { return tok.User == id })
	if err != nil {
		return 0, err
	}
	keys, err := t.Keys(id)
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := t.DeleteKey(k.Fingerprint); err != nil {
			return 0, err
		}
	}
	u, err := t.User(id)
	if err != nil {
		return 0, err
	}
	// Removed means kept out: the same account does not come back as a new
	// user through an allow rule (users allow <email> lets it in again).
	bans, err := t.tx.CreateBucketIfNotExists(bucketBans)
	if err != nil {
		return 0, err
	}
	if err := putJSON(bans, banKey(u.Issuer, u.Subject), &Ban{Issuer: u.Issuer, Subject: u.Subject, Email: u.Email, At: time.Now().UTC()}); err != nil {
		return 0, err
	}
	return len(gone), t.tx.Bucket(bucketUsers).Delete([]byte(id))
}
