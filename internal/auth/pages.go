package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/oauth2"
)

// WebSessionName names the tokens of browsers' sessions.
const WebSessionName = "web session"

// SessionTTL is how long a browser's session lasts.
const SessionTTL = 7 * 24 * time.Hour

// Begin is GET /login/{id}: the URL the CLI printed. It sends the browser to
// the provider, bound to this browser by a cookie holding the state.
func (s *Service) Begin(w http.ResponseWriter, r *http.Request) {
	s.begin(w, r, r.PathValue("id"))
}

// BeginWeb is GET /login: "Sign in" on the status page. The browser that
// starts it is the one that ends it, so there is no code to confirm: the
// callback gives it a session cookie.
func (s *Service) BeginWeb(w http.ResponseWriter, r *http.Request, addr string) {
	s.mu.Lock()
	id := s.add(addr, true).id
	s.mu.Unlock()
	s.begin(w, r, id)
}

// TooMany is the page for a client over its limit of login requests.
func (s *Service) TooMany(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "60")
	s.page(w, http.StatusTooManyRequests, pageData{Error: "Too many sign-in attempts from your address: wait a minute and try again."})
}

func (s *Service) begin(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	s.purge(s.now())
	l, ok := s.logins[id]
	if !ok || s.now().After(l.expires) {
		s.mu.Unlock()
		s.page(w, http.StatusGone, pageData{Error: "This sign-in link has expired or is unknown. Run fcm login again for a new one."})
		return
	}
	if l.called {
		s.mu.Unlock()
		s.page(w, http.StatusGone, pageData{Error: "This sign-in link was already used. Run fcm login again for a new one."})
		return
	}
	if l.state != "" {
		delete(s.states, l.state)
	}
	l.state, l.nonce, l.verifier = random(24), random(24), oauth2.GenerateVerifier()
	s.states[l.state] = id
	state, nonce, verifier := l.state, l.nonce, l.verifier
	s.mu.Unlock()

	_, oc, err := s.oauth(r.Context())
	if err != nil {
		s.log.Error("login: provider discovery", "err", err)
		s.page(w, http.StatusBadGateway, pageData{Error: "fcm cannot reach its OpenID provider (" + s.cfg.Issuer + "). Try again later, or tell the host's admin."})
		return
	}
	s.setCookie(w, stateCookie, state)
	http.Redirect(w, r, oc.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusFound)
}

// Callback is GET /oauth2/callback: the provider's answer. The state is spent
// at once; the code is exchanged (with the PKCE verifier), the ID token
// checked, and the person asked to confirm the code their terminal shows.
//
// addr is the browser's address: the confirm page warns when it is not the
// one the CLI started the login from.
func (s *Service) Callback(w http.ResponseWriter, r *http.Request, addr string) {
	q := r.URL.Query()
	s.mu.Lock()
	id, ok := s.states[q.Get("state")]
	l := s.logins[id]
	if !ok || l == nil || s.now().After(l.expires) {
		s.mu.Unlock()
		s.page(w, http.StatusBadRequest, pageData{Error: "This sign-in was already completed or has expired (its state is unknown). Run fcm login again."})
		return
	}
	delete(s.states, l.state)
	l.called = true
	nonce, verifier := l.nonce, l.verifier
	s.mu.Unlock()

	fail := func(f *Failure) {
		s.mu.Lock()
		l.failure = f
		s.mu.Unlock()
		s.log.Warn("login failed", "login", id, "code", f.Code, "err", f.Message)
		s.page(w, f.Status, pageData{Error: f.Message})
	}
	if c, err := s.onlyCookie(r, stateCookie); err != nil || subtle.ConstantTimeCompare([]byte(c), []byte(q.Get("state"))) != 1 {
		fail(&Failure{http.StatusBadRequest, api.CodeLoginFailed, "login failed: this sign-in was started in another browser (the state does not match this browser's). Open the URL fcm login printed in this browser."})
		return
	}
	if e := q.Get("error"); e != "" {
		fail(&Failure{http.StatusBadRequest, api.CodeLoginFailed, fmt.Sprintf("login failed: the provider said %s: %s", e, q.Get("error_description"))})
		return
	}
	ident, err := s.exchange(r, q.Get("code"), verifier, nonce)
	if err != nil {
		fail(&Failure{http.StatusBadRequest, api.CodeLoginFailed, "login failed: " + err.Error()})
		return
	}
	var refused *Failure
	if err := s.store.View(func(tx *store.Tx) (err error) { refused, err = admitted(tx, ident.user()); return }); err != nil {
		fail(&Failure{http.StatusInternalServerError, api.CodeInternal, err.Error()})
		return
	}
	if refused != nil {
		// The audit trail has every refusal of a login too (the admin's to read).
		ev := &store.AuditEvent{At: s.now().UTC(), Who: ident.email, Action: "login", Result: refused.Message}
		if err := s.store.Update(func(tx *store.Tx) error { return tx.AddAuditEvent(ev) }); err != nil {
			s.log.Error("audit trail", "action", "login", "err", err)
		}
		fail(refused)
		return
	}
	if l.web {
		s.finishWeb(w, r, id, ident)
		return
	}
	csrf := random(24)
	s.mu.Lock()
	l.ident, l.csrf = ident, csrf
	d := pageData{Confirm: true, Email: ident.email, Name: ident.name, ID: id, CSRF: csrf,
		Host: l.hostname, Addr: l.addr, Started: l.started.UTC().Format("15:04:05 MST, 2 Jan 2006"),
		Ago: ago(s.now().Sub(l.started)), Loopback: l.port != 0, Port: l.port}
	if addr != l.addr {
		d.BrowserAddr = addr
	}
	s.mu.Unlock()
	s.setCookie(w, confirmCookie, csrf)
	s.clearCookie(w, stateCookie)
	s.page(w, http.StatusOK, d)
}

// ago says d as "just now" or "N minutes ago".
func ago(d time.Duration) string {
	switch m := int(d / time.Minute); m {
	case 0:
		return "just now"
	case 1:
		return "1 minute ago"
	default:
		return fmt.Sprintf("%d minutes ago", m)
	}
}

// exchange trades the code for tokens and checks the ID token: signature,
// issuer, audience, expiry (go-oidc), nonce, and a verified email.
func (s *Service) exchange(r *http.Request, code, verifier, nonce string) (*identity, error) {
	p, oc, err := s.oauth(r.Context())
	if err != nil {
		return nil, err
	}
	ctx := oidc.ClientContext(r.Context(), s.cfg.HTTPClient)
	tok, err := oc.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("the provider refused the sign-in code (%s: %s); it may have been used already or expired", re.ErrorCode, re.ErrorDescription)
		}
		return nil, fmt.Errorf("exchange the sign-in code: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, errors.New("the provider sent no ID token")
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: s.cfg.ClientID}).Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("the ID token was refused: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return nil, errors.New("the ID token was refused: its nonce is not this login's")
	}
	var claims identityClaims
	if err := idt.Claims(&claims); err != nil {
		return nil, fmt.Errorf("the ID token's claims: %w", err)
	}
	if claims.Email == "" {
		// OIDC Core 5.4: a provider may keep the profile claims to its
		// UserInfo endpoint. Those claims are about the ID token's subject
		// only if UserInfo says the same sub (5.3.2).
		if claims, err = s.userInfo(ctx, p, tok, idt.Subject); err != nil {
			return nil, err
		}
	}
	if claims.Email == "" {
		return nil, errors.New("the provider gave no email address, in the ID token or from UserInfo (fcm asks for the email scope)")
	}
	if claims.Verified == nil || !*claims.Verified {
		return nil, fmt.Errorf("the provider has not verified the email %s", claims.Email)
	}
	email, ok := store.NormalEmail(claims.Email)
	if !ok {
		return nil, fmt.Errorf("the provider's email %q is not an ASCII address fcm can match against its allow-list", claims.Email)
	}
	return &identity{issuer: idt.Issuer, subject: idt.Subject, email: email, name: claims.Name, hd: strings.ToLower(claims.HD)}, nil
}

// identityClaims are the claims fcm reads, from the ID token or UserInfo.
type identityClaims struct {
	Subject  string `json:"sub"`
	Email    string `json:"email"`
	Verified *bool  `json:"email_verified"`
	Name     string `json:"name"`
	HD       string `json:"hd"` // Google: the Workspace domain that manages the account
}

// userInfo fetches the claims from the provider's UserInfo endpoint with the
// access token, and refuses them unless they are about subject.
func (s *Service) userInfo(ctx context.Context, p *oidc.Provider, tok *oauth2.Token, subject string) (identityClaims, error) {
	var claims identityClaims
	ui, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return claims, fmt.Errorf("the ID token has no email, and the provider's UserInfo failed: %w", err)
	}
	if err := ui.Claims(&claims); err != nil {
		return claims, fmt.Errorf("the provider's UserInfo claims: %w", err)
	}
	if ui.Subject == "" || subtle.ConstantTimeCompare([]byte(ui.Subject), []byte(subject)) != 1 || claims.Subject != ui.Subject {
		return identityClaims{}, fmt.Errorf("the provider's UserInfo is about another subject (%q, the ID token's is %q): refused", ui.Subject, subject)
	}
	return claims, nil
}

// Confirm is POST /login/{id}/confirm: the person saw the code and confirms
// (or cancels). The user is made or updated here; the CLI's next poll gets a
// token.
func (s *Service) Confirm(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		s.page(w, http.StatusBadRequest, pageData{Error: "bad form"})
		return
	}
	s.mu.Lock()
	l, ok := s.logins[id]
	if !ok || s.now().After(l.expires) || l.ident == nil || l.failure != nil || l.userID != "" {
		s.mu.Unlock()
		s.page(w, http.StatusGone, pageData{Error: "This login has ended or expired. Run fcm login again."})
		return
	}
	c, err := s.onlyCookie(r, confirmCookie)
	if err != nil || subtle.ConstantTimeCompare([]byte(c), []byte(l.csrf)) != 1 ||
		subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(l.csrf)) != 1 {
		s.mu.Unlock()
		s.page(w, http.StatusForbidden, pageData{Error: "This confirmation did not come from the page fcm showed in this browser."})
		return
	}
	ident := l.ident
	if r.PostForm.Get("action") == "cancel" {
		l.failure = &Failure{http.StatusBadRequest, api.CodeLoginFailed, "login cancelled in the browser"}
		s.mu.Unlock()
		s.clearCookie(w, confirmCookie)
		s.page(w, http.StatusOK, pageData{Done: "Login cancelled: fcm login in your terminal stops. Nothing was given to it."})
		return
	}
	s.mu.Unlock()

	u, f := s.admit(ident)
	s.mu.Lock()
	port, grant := l.port, ""
	if f != nil {
		l.failure = f
	} else {
		l.userID = u.ID
		if port != 0 {
			l.grant = random(32)
		} else {
			l.grant = userCode()
		}
		grant = l.grant
	}
	s.mu.Unlock()
	s.clearCookie(w, confirmCookie)
	if f != nil {
		s.page(w, f.Status, pageData{Error: f.Message})
		return
	}
	if port != 0 {
		// RFC 8252: back to the CLI that started the login, on this
		// browser's own machine. A browser elsewhere (a phished person's)
		// takes the grant to its own loopback, never to the CLI that began.
		http.Redirect(w, r, fmt.Sprintf("http://127.0.0.1:%d/done?grant=%s", port, grant), http.StatusSeeOther)
		return
	}
	s.page(w, http.StatusOK, pageData{Grant: grant, Email: u.Email})
}

// admit makes or updates the user the provider vouched for, if the
// allow-list lets them in.
func (s *Service) admit(ident *identity) (*store.User, *Failure) {
	var u *store.User
	var refused *Failure
	err := s.store.Update(func(tx *store.Tx) error {
		var err error
		if refused, err = admitted(tx, ident.user()); err != nil || refused != nil {
			return err
		}
		u, err = tx.UserBySubject(ident.issuer, ident.subject)
		if errors.Is(err, store.ErrNotFound) {
			u, err = &store.User{ID: store.NewUserID(), Issuer: ident.issuer, Subject: ident.subject}, nil
		}
		if err != nil {
			return err
		}
		u.Email, u.Name, u.HostedDomain, u.LastLoginAt = ident.email, ident.name, ident.hd, s.now().UTC()
		return tx.PutUser(u)
	})
	if err != nil {
		return nil, &Failure{http.StatusInternalServerError, api.CodeInternal, err.Error()}
	}
	return u, refused
}

// finishWeb ends a browser's own login: a session token in a cookie, and
// back to the status page.
func (s *Service) finishWeb(w http.ResponseWriter, r *http.Request, id string, ident *identity) {
	s.mu.Lock()
	s.drop(id)
	s.mu.Unlock()
	s.clearCookie(w, stateCookie)
	u, f := s.admit(ident)
	if f != nil {
		s.page(w, f.Status, pageData{Error: f.Message})
		return
	}
	secret := store.NewSecret()
	tok := &store.Token{ID: store.NewTokenID(), Name: WebSessionName, User: u.ID, ExpiresAt: s.now().Add(SessionTTL).UTC()}
	if err := s.store.Update(func(tx *store.Tx) error { return tx.PutToken(secret, tok) }); err != nil {
		s.page(w, http.StatusInternalServerError, pageData{Error: err.Error()})
		return
	}
	s.log.Info("web login", "user", u.Email, "user_id", u.ID, "token", tok.ID)
	s.SetSession(w, secret, SessionTTL)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// SetSession gives the browser its session: the token in an HttpOnly cookie
// (Secure and __Host- over HTTPS, SameSite=Lax), for ttl.
func (s *Service) SetSession(w http.ResponseWriter, secret string, ttl time.Duration) {
	SetSessionCookie(w, secret, ttl, s.secure())
}

type pageData struct {
	Error   string
	Confirm bool
	Email   string
	Name    string
	ID      string
	CSRF    string
	Done    string
	// What the confirm page says of the login it authorizes.
	Host, Addr, Started, Ago string
	Loopback                 bool // the browser goes back to the CLI on this machine
	Port                     int
	Grant                    string // the code to type into the CLI (typed-code logins)
	BrowserAddr              string // set when the browser is not where the login started
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>fcm login</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em;color:#222}
code{font-size:2em;letter-spacing:.1em;display:block;margin:.5em 0}#error{color:#a00}.warn{color:#a00;font-weight:bold}
dt{font-weight:bold}button{font-size:1em;padding:.4em 1.2em;margin-right:.5em}</style></head><body>
<h1>fcm login</h1>
{{if .Error}}<p id="error">{{.Error}}</p>
{{else if .Confirm}}<p>Signed in as <b>{{.Email}}</b>{{if .Name}} ({{.Name}}){{end}}.</p>
<p>A command line asks for access to your fcm account:</p>
<dl id="login-origin"><dt>fcm login on</dt><dd id="login-host">{{.Host}}</dd>
<dt>from address</dt><dd id="login-addr">{{.Addr}}</dd>
<dt>started</dt><dd>{{.Started}} ({{.Ago}})</dd></dl>
{{if .BrowserAddr}}<p class="warn" id="addr-warning">This browser is at {{.BrowserAddr}}, but the login was started from {{.Addr}}: another computer or network. Unless you started it there yourself, cancel.</p>{{end}}
<p class="warn">Confirm only if you ran fcm login yourself, just now. If someone sent you this link or a code, cancel: confirming would give them your account.</p>
{{if .Loopback}}<p>After you confirm, this browser hands the login to fcm login on this computer.</p>
{{else}}<p>After you confirm, this page shows a code to type into fcm login in your own terminal.</p>{{end}}
<form method="post" action="/login/{{.ID}}/confirm"><input type="hidden" name="csrf" value="{{.CSRF}}">
<button id="confirm" name="action" value="confirm">I started it: log in</button>
<button id="cancel" name="action" value="cancel">Cancel</button></form>
{{else if .Grant}}<p>Logged in as <b>{{.Email}}</b>. Type this code into fcm login in your terminal:</p>
<code id="grant-code">{{.Grant}}</code>
<p class="warn">Never give this code to anyone: whoever types it gets your account.</p>
{{else}}<p id="done">{{.Done}}</p>{{end}}
</body></html>
`))

func (s *Service) page(w http.ResponseWriter, status int, d pageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	formAction := "'self'"
	if d.Loopback {
		// The confirm redirects to the CLI's loopback port; browsers hold a
		// form's redirects to form-action too.
		formAction += fmt.Sprintf(" http://127.0.0.1:%d", d.Port)
	}
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action "+formAction+"; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	if err := pageTmpl.Execute(w, d); err != nil {
		s.log.Error("login page", "err", err)
	}
}
