package browsertest_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/fcmhost/fcm/internal/auth/oidctest"
)

// standIn is a small relying party that serves the same pages as fcm:
// /login/<id> redirects to the provider, /oauth2/callback shows the code or
// an error, and POST /login/<id>/confirm says who logged in.
type standIn struct {
	srv      *httptest.Server
	base     string // the URL the browser uses: srv.URL, or with a host name
	provider *oidctest.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier

	mu      sync.Mutex
	logins  map[string]*standInLogin // by id
	byState map[string]*standInLogin
}

type standInLogin struct {
	id, code           string
	state, nonce, pkce string
	email              string
}

func newStandIn(t *testing.T) *standIn { t.Helper(); return newStandInAt(t, "") }

// newStandInAt serves the stand-in at http://host:port when host is set.
func newStandInAt(t *testing.T, host string) *standIn {
	t.Helper()
	s := &standIn{logins: make(map[string]*standInLogin), byState: make(map[string]*standInLogin)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/{id}", s.start)
	mux.HandleFunc("GET /oauth2/callback", s.callback)
	mux.HandleFunc("POST /login/{id}/confirm", s.confirm)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	s.base = s.srv.URL
	if host != "" {
		s.base = "http://" + host + ":" + strconv.Itoa(s.srv.Listener.Addr().(*net.TCPAddr).Port)
	}

	const clientID = "fcm-browser-test"
	p, err := oidctest.Start(oidctest.Options{ClientID: clientID, ClientSecret: "s3cret", RedirectURIs: []string{s.base + "/oauth2/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	op, err := oidc.NewProvider(context.Background(), p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	s.provider = p
	s.oauth = oauth2.Config{
		ClientID: clientID, ClientSecret: "s3cret", Endpoint: op.Endpoint(),
		RedirectURL: s.base + "/oauth2/callback",
		Scopes:      []string{oidc.ScopeOpenID, "email", "profile"},
	}
	s.verifier = op.Verifier(&oidc.Config{ClientID: clientID})
	return s
}

// newLogin starts a login as fcm's POST /v1/logins does; it returns the URL
// the person opens and the code the page must show.
func (s *standIn) newLogin() (url, code string) {
	r := rand.Text()
	l := &standInLogin{id: r[:10], code: r[10:14] + "-" + r[14:18], state: rand.Text(), nonce: rand.Text(), pkce: oauth2.GenerateVerifier()}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logins[l.id] = l
	s.byState[l.state] = l
	return s.base + "/login/" + l.id, l.code
}

func (s *standIn) start(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	l, ok := s.logins[r.PathValue("id")]
	s.mu.Unlock()
	if !ok {
		page(w, http.StatusNotFound, `<p id="error">unknown login</p>`)
		return
	}
	http.Redirect(w, r, s.oauth.AuthCodeURL(l.state, oidc.Nonce(l.nonce), oauth2.S256ChallengeOption(l.pkce)), http.StatusFound)
}

func (s *standIn) callback(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	l, ok := s.byState[r.URL.Query().Get("state")]
	s.mu.Unlock()
	if !ok {
		page(w, http.StatusBadRequest, `<p id="error">unknown state</p>`)
		return
	}
	tok, err := s.oauth.Exchange(r.Context(), r.URL.Query().Get("code"), oauth2.VerifierOption(l.pkce))
	if err != nil {
		page(w, http.StatusBadRequest, `<p id="error">login failed: %s</p>`, err)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := s.verifier.Verify(r.Context(), raw)
	if err != nil || idt.Nonce != l.nonce {
		page(w, http.StatusBadRequest, `<p id="error">login failed: bad ID token: %v</p>`, err)
		return
	}
	var c struct {
		Email string `json:"email"`
	}
	if err := idt.Claims(&c); err != nil {
		page(w, http.StatusBadRequest, `<p id="error">login failed: %s</p>`, err)
		return
	}
	s.mu.Lock()
	l.email = c.Email
	s.mu.Unlock()
	page(w, http.StatusOK, `<p>Check that the code matches your terminal:</p>
<code id="login-code">%s</code>
<form method="post" action="/login/%s/confirm"><button id="confirm" type="submit">Confirm</button></form>`, l.code, l.id)
}

func (s *standIn) confirm(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	l, ok := s.logins[r.PathValue("id")]
	s.mu.Unlock()
	if !ok || l.email == "" {
		page(w, http.StatusBadRequest, `<p id="error">nothing to confirm</p>`)
		return
	}
	page(w, http.StatusOK, `<p id="done">Logged in as %s. You can close this window.</p>`, l.email)
}

// page writes an HTML page; the arguments are escaped.
func page(w http.ResponseWriter, status int, body string, args ...any) {
	for i, a := range args {
		args[i] = template.HTMLEscapeString(fmt.Sprint(a))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><title>fcm login</title></head><body>\n"+body+"\n</body></html>\n", args...)
}
