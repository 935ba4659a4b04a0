// Package auth provides fcm's OIDC login for people: the relying party
// (authorization code with PKCE, state and nonce; the ID token checked by
// go-oidc), the logins a CLI starts and polls, and the browser pages between
// them. It admits only emails the allow-list lets in, and makes users and their
// tokens in the store.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/oauth2"
)

// Google is the default issuer.
const Google = store.GoogleIssuer

// CallbackPath is where the provider sends the browser back.
const CallbackPath = "/oauth2/callback"

// Config says which provider and client to use.
type Config struct {
	Issuer       string // exactly as the provider's discovery document says it
	ClientID     string
	ClientSecret string
	PublicURL    string // the daemon as browsers reach it: https://fcm.<domain>
	HTTPClient   *http.Client
	TokenTTL     time.Duration // how long a CLI's token lasts; 0: DefaultTokenTTL
}

// DefaultTokenTTL is how long a token fcm login makes lasts; logging in
// again makes a new one.
const DefaultTokenTTL = 90 * 24 * time.Hour

// Limits of logins in progress. A client address holds at most
// maxPendingPerAddr of them and everyone together maxPending; past either,
// the oldest goes to make room (a flood evicts its own, never refuses
// another person's new login).
const (
	LoginTTL          = 10 * time.Minute
	PollInterval      = 2 * time.Second
	maxPending        = 10000
	maxPendingPerAddr = 10
)

// Service runs logins.
type Service struct {
	cfg   Config
	store *store.Store
	log   *slog.Logger
	now   func() time.Time

	limit *limiter // of the public login endpoints, per client address

	mu       sync.Mutex
	logins   map[string]*login // by id
	states   map[string]string // OAuth state -> login id, until its callback
	provider *oidc.Provider    // discovered on first use
}

// login is one `fcm login` in progress.
type login struct {
	id       string
	addr     string // the client address that started it
	started  time.Time
	web      bool   // started by the status page's "Sign in", not by a CLI
	port     int    // the CLI's loopback port for the redirect; 0: it takes a typed code
	hostname string // the CLI's host, as it said
	pollHash [32]byte
	// grant is what the CLI must poll with once the person confirmed: the
	// loopback redirect's secret, or the code the page showed. wrongGrants
	// counts polls with another one.
	grant       string
	wrongGrants int
	expires     time.Time

	state, nonce, verifier string // set when the browser begins

	called  bool // the callback came: the state is spent
	csrf    string
	ident   *identity // who the provider vouched for
	userID  string    // set when the person confirmed
	failure *Failure
}

type identity struct {
	issuer, subject, email, name string
	hd                           string // Google's hosted domain claim
}

// user is ident as the allow-list judges it.
func (ident *identity) user() *store.User {
	return &store.User{Issuer: ident.issuer, Subject: ident.subject, Email: ident.email, Name: ident.name, HostedDomain: ident.hd}
}

// Failure is how a login ended badly, for the page and for the CLI's poll.
type Failure struct {
	Status  int    // HTTP status
	Code    string // api.Code*
	Message string
}

// New checks cfg; the provider is discovered on the first login, so a daemon
// starts while the provider is unreachable.
func New(cfg Config, st *store.Store, log *slog.Logger) (*Service, error) {
	if cfg.ClientID == "" || cfg.ClientSecret == "" {
		return nil, errors.New("OIDC needs both a client id and a client secret")
	}
	if cfg.Issuer == "" {
		cfg.Issuer = Google
	}
	if u, err := url.Parse(cfg.Issuer); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("--oidc-issuer %q: want a URL such as %s", cfg.Issuer, Google)
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("public URL %q: want https://fcm.<domain> (the provider redirects browsers to it)", cfg.PublicURL)
	}
	cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if log == nil {
		log = slog.Default()
	}
	return &Service{cfg: cfg, store: st, log: log, now: time.Now, limit: newLimiter(),
		logins: map[string]*login{}, states: map[string]string{}}, nil
}

// RedirectURL is the callback to register with the provider.
func (s *Service) RedirectURL() string { return s.cfg.PublicURL + CallbackPath }

// Issuer is the provider's issuer.
func (s *Service) Issuer() string { return s.cfg.Issuer }

// maxWrongGrants is how many polls with a wrong grant end a login.
const maxWrongGrants = 5

// Start begins a login for a CLI at client address addr. The token goes only
// to a poll that carries the grant the person's confirm gave: through the
// browser's redirect to the CLI's loopback port (req.Port), or as a code the
// page shows and the person types into the CLI.
func (s *Service) Start(addr string, req api.LoginStartRequest) (*api.LoginStart, *Failure) {
	if req.Port < 0 || req.Port > 65535 {
		return nil, &Failure{http.StatusBadRequest, api.CodeBadRequest, "port must be a TCP port (1-65535), or 0 for a typed code"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.add(addr, false)
	l.port, l.hostname = req.Port, cleanHostname(req.Hostname)
	poll := random(32)
	l.pollHash = sha256.Sum256([]byte(poll))
	return &api.LoginStart{ID: l.id, URL: s.cfg.PublicURL + "/login/" + l.id, PollToken: poll,
		Interval: int(PollInterval / time.Second), ExpiresAt: l.expires.UTC()}, nil
}

// cleanHostname keeps what a CLI says its host is to 64 printable ASCII
// characters, for the confirm page.
func cleanHostname(h string) string {
	var b strings.Builder
	for _, c := range h {
		if b.Len() == 64 {
			break
		}
		if c > ' ' && c < 0x7f {
			b.WriteRune(c)
		}
	}
	if b.Len() == 0 {
		return "(not given)"
	}
	return b.String()
}

// add makes a new pending login for addr, first purging the expired ones and
// making room: the oldest of addr's own past maxPendingPerAddr, the oldest
// of all past maxPending. s.mu is held.
func (s *Service) add(addr string, web bool) *login {
	now := s.now()
	s.purge(now)
	var mine []*login
	for _, l := range s.logins {
		if l.addr == addr {
			mine = append(mine, l)
		}
	}
	for len(mine) >= maxPendingPerAddr {
		i := oldest(mine)
		s.drop(mine[i].id)
		mine = append(mine[:i], mine[i+1:]...)
	}
	for len(s.logins) >= maxPending {
		all := make([]*login, 0, len(s.logins))
		for _, l := range s.logins {
			all = append(all, l)
		}
		s.drop(all[oldest(all)].id)
	}
	l := &login{id: random(16), addr: addr, web: web, started: now, expires: now.Add(LoginTTL)}
	s.logins[l.id] = l
	return l
}

// oldest returns the index of the login started first.
func oldest(ls []*login) int {
	o := 0
	for i, l := range ls {
		if l.started.Before(ls[o].started) {
			o = i
		}
	}
	return o
}

// purge forgets the logins that expired; s.mu is held.
func (s *Service) purge(now time.Time) {
	for id, l := range s.logins {
		if now.After(l.expires) {
			s.drop(id)
		}
	}
}

// Pending is how many logins are in progress (expired ones purged).
func (s *Service) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.purge(s.now())
	return len(s.logins)
}

// Limited reports whether addr has used up its share of the public login
// endpoints for now (each call counts one request); the caller answers 429.
func (s *Service) Limited(addr string) bool { return !s.limit.allow(addr, s.now()) }

// Poll tells the CLI how its login goes: the new token once (the login ends)
// if grant is the one the person's confirm gave; nil and nil while they have
// not confirmed or the poll has no grant; or why it failed.
func (s *Service) Poll(id, pollToken, grant string) (*api.LoginResult, *Failure) {
	s.mu.Lock()
	l, ok := s.logins[id]
	if !ok || s.now().After(l.expires) {
		if ok {
			s.drop(id)
		}
		s.mu.Unlock()
		return nil, &Failure{http.StatusGone, api.CodeExpired, "the login expired or is unknown: run fcm login again"}
	}
	sum := sha256.Sum256([]byte(pollToken))
	if subtle.ConstantTimeCompare(sum[:], l.pollHash[:]) != 1 {
		s.mu.Unlock()
		return nil, &Failure{http.StatusForbidden, api.CodeForbidden, "wrong poll token for this login"}
	}
	if l.failure != nil {
		f := l.failure
		s.drop(id)
		s.mu.Unlock()
		return nil, f
	}
	if l.userID == "" || grant == "" {
		s.mu.Unlock()
		return nil, nil
	}
	if subtle.ConstantTimeCompare([]byte(normalGrant(grant)), []byte(normalGrant(l.grant))) != 1 {
		if l.wrongGrants++; l.wrongGrants >= maxWrongGrants {
			s.drop(id)
			s.mu.Unlock()
			return nil, &Failure{http.StatusForbidden, api.CodeLoginFailed, "too many wrong codes: the login is cancelled; run fcm login again"}
		}
		s.mu.Unlock()
		return nil, &Failure{http.StatusForbidden, api.CodeForbidden, "wrong code: type the code the page shows after you confirmed"}
	}
	userID := l.userID
	s.drop(id)
	s.mu.Unlock()
	return s.mint(userID)
}

// mint makes a token for the user who confirmed, checking again that they may
// still log in.
func (s *Service) mint(userID string) (*api.LoginResult, *Failure) {
	secret := store.NewSecret()
	var res *api.LoginResult
	var refused *Failure
	err := s.store.Update(func(tx *store.Tx) error {
		u, err := tx.User(userID)
		if err != nil {
			refused = &Failure{http.StatusForbidden, api.CodeNotAllowed, "your user was removed while logging in"}
			return nil
		}
		if refused, err = admitted(tx, u); err != nil {
			return err
		}
		// The audit trail has every login, and every refusal of one.
		ev := &store.AuditEvent{At: s.now().UTC(), Who: u.Email, Action: "login", Result: "ok"}
		if refused != nil {
			ev.Result = refused.Message
			return tx.AddAuditEvent(ev)
		}
		tok := &store.Token{ID: store.NewTokenID(), Name: "fcm login", User: u.ID, ExpiresAt: s.now().Add(s.cfg.TokenTTL).UTC()}
		if err := tx.PutToken(secret, tok); err != nil {
			return err
		}
		if err := tx.AddAuditEvent(ev); err != nil {
			return err
		}
		res = &api.LoginResult{Token: secret, User: APIUser(u)}
		return nil
	})
	if err != nil {
		return nil, &Failure{http.StatusInternalServerError, api.CodeInternal, err.Error()}
	}
	if refused != nil {
		return nil, refused
	}
	s.log.Info("login", "user", res.User.Email, "user_id", res.User.ID)
	return res, nil
}

func notAllowed(email string) *Failure {
	return &Failure{http.StatusForbidden, api.CodeNotAllowed, fmt.Sprintf(
		"%s may not log in to this fcm host: ask its admin to run 'fcm users allow %s'", email, email)}
}

// admitted checks the allow-list for u: nil if it lets u in, else why not.
func admitted(tx *store.Tx, u *store.User) (*Failure, error) {
	if ban, err := tx.Banned(u.Issuer, u.Subject); err != nil {
		return nil, err
	} else if ban != nil {
		return &Failure{http.StatusForbidden, api.CodeNotAllowed, fmt.Sprintf(
			"%s was removed from this fcm host by its admin: ask them to run 'fcm users allow %s'", u.Email, ban.Email)}, nil
	}
	rules, err := tx.AccessRules()
	if err != nil {
		return nil, err
	}
	if store.AllowedUser(rules, u) {
		return nil, nil
	}
	if _, domain, _ := strings.Cut(u.Email, "@"); store.Allowed(rules, u.Email) {
		return &Failure{http.StatusForbidden, api.CodeNotAllowed, fmt.Sprintf(
			"%s may not log in to this fcm host: @%s lets in only the accounts %s manages (Google's hd claim), and this one is not; ask its admin to run 'fcm users allow %s'",
			u.Email, domain, domain, u.Email)}, nil
	}
	return notAllowed(u.Email), nil
}

// APIUser is u as the API shows it (without the counts only the admin sees).
func APIUser(u *store.User) api.User {
	return api.User{ID: u.ID, Email: u.Email, Name: u.Name, Issuer: u.Issuer, Subject: u.Subject,
		Role: api.RoleUser, Allowed: true, CreatedAt: u.CreatedAt, LastLoginAt: u.LastLoginAt}
}

// drop forgets a login and its state; s.mu is held.
func (s *Service) drop(id string) {
	if l, ok := s.logins[id]; ok && l.state != "" {
		delete(s.states, l.state)
	}
	delete(s.logins, id)
}

// oauth returns the provider and the client's OAuth2 configuration,
// discovering the provider on first use.
func (s *Service) oauth(ctx context.Context) (*oidc.Provider, *oauth2.Config, error) {
	s.mu.Lock()
	p := s.provider
	s.mu.Unlock()
	if p == nil {
		var err error
		p, err = oidc.NewProvider(oidc.ClientContext(ctx, s.cfg.HTTPClient), s.cfg.Issuer)
		if err != nil {
			return nil, nil, fmt.Errorf("the OpenID provider %s: %w", s.cfg.Issuer, err)
		}
		s.mu.Lock()
		s.provider = p
		s.mu.Unlock()
	}
	return p, &oauth2.Config{ClientID: s.cfg.ClientID, ClientSecret: s.cfg.ClientSecret, Endpoint: p.Endpoint(),
		RedirectURL: s.RedirectURL(), Scopes: []string{oidc.ScopeOpenID, "email", "profile"}}, nil
}

// random returns n random bytes, base64url.
func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// normalGrant is a grant as compared: a typed code in upper case, without
// spaces or dashes (a loopback grant has neither upper case nor spaces).
func normalGrant(g string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == ' ' || r == '-':
			return -1
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		}
		return r
	}, strings.TrimSpace(g))
}

// userCode returns a code people compare at a glance: 8 consonants, no
// vowels (no words), in two groups.
func userCode() string {
	const letters = "BCDFGHJKLMNPQRSTVWXZ"
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b[:4]) + "-" + string(b[4:])
}
