package oidctest_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/fcmhost/fcm/internal/auth/oidctest"
)

const (
	clientID     = "fcm-test"
	clientSecret = "fcm-test-secret"
)

// rp is a relying party built the way fcm builds one: go-oidc for discovery
// and verification, x/oauth2 for the code flow.
type rp struct {
	provider *oidctest.Provider
	oidc     *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	http     *http.Client
}

// flow is one authorization: what the RP sent and what came back.
type flow struct {
	state, nonce, pkce string
	code               string
}

func newRP(t *testing.T) *rp {
	t.Helper()
	callback := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "relying party callback") // the test reads the code from the final URL
	}))
	t.Cleanup(callback.Close)
	redirect := callback.URL + "/oauth2/callback"

	p, err := oidctest.Start(oidctest.Options{ClientID: clientID, ClientSecret: clientSecret, RedirectURIs: []string{redirect}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)

	ctx := context.Background()
	op, err := oidc.NewProvider(ctx, p.Issuer())
	if err != nil {
		t.Fatalf("discovery at %s: %v", p.Issuer(), err)
	}
	jar, _ := cookiejar.New(nil)
	return &rp{
		provider: p,
		oidc:     op,
		oauth: oauth2.Config{
			ClientID: clientID, ClientSecret: clientSecret,
			Endpoint: op.Endpoint(), RedirectURL: redirect,
			Scopes: []string{oidc.ScopeOpenID, "email", "profile"},
		},
		verifier: op.Verifier(&oidc.Config{ClientID: clientID}),
		http:     &http.Client{Jar: jar, Timeout: 10 * time.Second},
	}
}

var hiddenID = regexp.MustCompile(`name="id" value="([^"]+)"`)

// login runs the browser side of the flow with a plain HTTP client: it opens
// the authorization URL, lands on the provider's form, posts the
// credentials and follows the redirects. It returns the last page's status,
// URL and body.
func (r *rp) login(t *testing.T, username, password string) (*flow, int, *url.URL, string) {
	t.Helper()
	f := &flow{state: rand.Text(), nonce: rand.Text(), pkce: oauth2.GenerateVerifier()}
	authURL := r.oauth.AuthCodeURL(f.state, oidc.Nonce(f.nonce), oauth2.S256ChallengeOption(f.pkce))

	resp, err := r.http.Get(authURL)
	if err != nil {
		t.Fatalf("GET auth URL: %v", err)
	}
	form := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("auth URL ended with %d, want the login form: %s", resp.StatusCode, form)
	}
	for _, id := range []string{`id="username"`, `id="password"`, `id="submit"`} {
		if !strings.Contains(form, id) {
			t.Fatalf("login form has no %s:\n%s", id, form)
		}
	}
	m := hiddenID.FindStringSubmatch(form)
	if m == nil {
		t.Fatalf("login form carries no request id:\n%s", form)
	}
	action := resp.Request.URL.ResolveReference(&url.URL{Path: "/login"})
	resp, err = r.http.PostForm(action.String(), url.Values{"id": {m[1]}, "username": {username}, "password": {password}})
	if err != nil {
		t.Fatalf("POST login form: %v", err)
	}
	body := readBody(t, resp)
	final := resp.Request.URL
	if final.Path == "/oauth2/callback" {
		if got := final.Query().Get("state"); got != f.state {
			t.Fatalf("callback state = %q, want %q", got, f.state)
		}
		f.code = final.Query().Get("code")
	}
	return f, resp.StatusCode, final, body
}

// code logs in and returns the flow with its authorization code.
func (r *rp) code(t *testing.T, u oidctest.User) *flow {
	t.Helper()
	f, status, final, body := r.login(t, u.Username, u.Password)
	if f.code == "" {
		t.Fatalf("login as %s ended at %s (%d) without a code: %s", u.Username, final, status, body)
	}
	return f
}

func (r *rp) exchange(f *flow) (*oauth2.Token, error) {
	return r.oauth.Exchange(context.Background(), f.code, oauth2.VerifierOption(f.pkce))
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func rawIDToken(t *testing.T, tok *oauth2.Token) string {
	t.Helper()
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		t.Fatal("token response has no id_token")
	}
	return raw
}

type claims struct {
	Email         string `json:"email"`
	EmailVerified bool   `json:"email_verified"`
	Name          string `json:"name"`
}

func TestProvider_CodeFlow(t *testing.T) {
	for _, style := range []struct {
		name  string
		style oauth2.AuthStyle
	}{
		{"client_secret_basic", oauth2.AuthStyleInHeader},
		{"client_secret_post", oauth2.AuthStyleInParams},
	} {
		t.Run(style.name, func(t *testing.T) {
			r := newRP(t)
			r.oauth.Endpoint.AuthStyle = style.style
			for _, u := range []oidctest.User{oidctest.Alice, oidctest.Carol} {
				f := r.code(t, u)
				tok, err := r.exchange(f)
				if err != nil {
					t.Fatalf("exchange: %v", err)
				}
				idt, err := r.verifier.Verify(context.Background(), rawIDToken(t, tok))
				if err != nil {
					t.Fatalf("verify ID token: %v", err)
				}
				if idt.Issuer != r.provider.Issuer() {
					t.Errorf("iss = %q, want %q", idt.Issuer, r.provider.Issuer())
				}
				if len(idt.Audience) != 1 || idt.Audience[0] != clientID {
					t.Errorf("aud = %q, want [%q]", idt.Audience, clientID)
				}
				if idt.Nonce != f.nonce {
					t.Errorf("nonce = %q, want %q", idt.Nonce, f.nonce)
				}
				if idt.Subject != u.Subject {
					t.Errorf("sub = %q, want %q", idt.Subject, u.Subject)
				}
				var c claims
				if err := idt.Claims(&c); err != nil {
					t.Fatal(err)
				}
				if want := (claims{u.Email, true, u.Name}); c != want {
					t.Errorf("claims = %+v, want %+v", c, want)
				}
				// The access token works at the userinfo endpoint too.
				info, err := r.oidc.UserInfo(context.Background(), oauth2.StaticTokenSource(tok))
				if err != nil {
					t.Fatalf("userinfo: %v", err)
				}
				if info.Subject != u.Subject || info.Email != u.Email {
					t.Errorf("userinfo = %s/%s, want %s/%s", info.Subject, info.Email, u.Subject, u.Email)
				}
			}
		})
	}
}

func TestProvider_Discovery(t *testing.T) {
	r := newRP(t)
	resp, err := http.Get(r.provider.Issuer() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Issuer        string   `json:"issuer"`
		AuthMethods   []string `json:"token_endpoint_auth_methods_supported"`
		PKCEMethods   []string `json:"code_challenge_methods_supported"`
		ScopesSupport []string `json:"scopes_supported"`
	}
	if err := json.Unmarshal([]byte(readBody(t, resp)), &d); err != nil {
		t.Fatal(err)
	}
	if d.Issuer != r.provider.Issuer() || strings.HasSuffix(d.Issuer, "/") || !strings.HasPrefix(d.Issuer, "http://127.0.0.1:") {
		t.Errorf("discovery issuer = %q, provider says %q", d.Issuer, r.provider.Issuer())
	}
	for _, want := range []string{"client_secret_basic", "client_secret_post"} {
		if !strings.Contains(strings.Join(d.AuthMethods, " "), want) {
			t.Errorf("token_endpoint_auth_methods_supported = %q, want %s", d.AuthMethods, want)
		}
	}
	if strings.Join(d.PKCEMethods, " ") != "S256" {
		t.Errorf("code_challenge_methods_supported = %q, want [S256]", d.PKCEMethods)
	}
}

func TestProvider_CodeIsSingleUse(t *testing.T) {
	r := newRP(t)
	f := r.code(t, oidctest.Bob)
	if _, err := r.exchange(f); err != nil {
		t.Fatalf("first exchange: %v", err)
	}
	_, err := r.exchange(f)
	if err == nil {
		t.Fatal("second exchange of the same code succeeded")
	}
	if !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("second exchange: %v, want invalid_grant", err)
	}
}

func TestProvider_WrongPKCEVerifier(t *testing.T) {
	r := newRP(t)
	f := r.code(t, oidctest.Alice)
	f.pkce = oauth2.GenerateVerifier()
	if _, err := r.exchange(f); err == nil {
		t.Fatal("exchange with a wrong PKCE verifier succeeded")
	}
}

func TestProvider_WrongClientSecret(t *testing.T) {
	r := newRP(t)
	f := r.code(t, oidctest.Alice)
	r.oauth.ClientSecret = "not-the-secret"
	_, err := r.exchange(f)
	if err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("exchange with a wrong secret: %v, want invalid_client", err)
	}
}

func TestProvider_WrongPassword(t *testing.T) {
	r := newRP(t)
	for _, c := range []struct{ user, password string }{
		{"alice", "bob-pw"},
		{"alice", ""},
		{"mallory", "alice-pw"},
	} {
		f, status, final, body := r.login(t, c.user, c.password)
		if f.code != "" || final.Path == "/oauth2/callback" {
			t.Fatalf("%s/%s logged in: %s", c.user, c.password, final)
		}
		if status != http.StatusUnauthorized {
			t.Errorf("%s/%s: status %d, want 401", c.user, c.password, status)
		}
		if !strings.Contains(body, `id="login-error"`) || !strings.Contains(body, "wrong username or password") {
			t.Errorf("%s/%s: page shows no error:\n%s", c.user, c.password, body)
		}
		if !strings.Contains(body, `id="username"`) {
			t.Errorf("%s/%s: page is not the login form again:\n%s", c.user, c.password, body)
		}
	}
}

func TestProvider_Tamper(t *testing.T) {
	for _, c := range []struct {
		name    string
		tamper  oidctest.Tamper
		wantErr string
	}{
		{"audience", oidctest.Tamper{Audience: "other-client"}, `expected audience "fcm-test" got ["other-client"]`},
		{"issuer", oidctest.Tamper{Issuer: "http://127.0.0.1:1"}, `id token issued by a different provider`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRP(t)
			r.provider.Tamper(c.tamper)
			tok, err := r.exchange(r.code(t, oidctest.Alice))
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			raw := rawIDToken(t, tok)
			_, err = r.verifier.Verify(context.Background(), raw)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("verify tampered token: %v, want %q", err, c.wantErr)
			}
			// Only the claim is wrong: the provider's keys still verify the signature.
			var jwks struct {
				URI string `json:"jwks_uri"`
			}
			if err := r.oidc.Claims(&jwks); err != nil {
				t.Fatal(err)
			}
			keys := oidc.NewRemoteKeySet(context.Background(), jwks.URI)
			if _, err := keys.VerifySignature(context.Background(), raw); err != nil {
				t.Errorf("tampered token's signature: %v", err)
			}

			// The tamper applies once: the next login verifies.
			tok, err = r.exchange(r.code(t, oidctest.Alice))
			if err != nil {
				t.Fatalf("exchange after tamper: %v", err)
			}
			if _, err := r.verifier.Verify(context.Background(), rawIDToken(t, tok)); err != nil {
				t.Errorf("token after the tampered one: %v", err)
			}
		})
	}
}
