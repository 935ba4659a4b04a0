// Package oidctest runs a real OpenID provider in memory for tests: the
// OpenID-certified op package of zitadel/oidc on a loopback port, with a
// fixed set of users (Alice, Bob, Carol), its own login form and a way to
// make the next ID token carry a wrong audience or issuer.
package oidctest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// Options configure the provider's one client (relying party).
type Options struct {
	ClientID     string
	ClientSecret string
	RedirectURIs []string // exact URIs the client may ask the provider to redirect to
	// ClaimsInUserInfo leaves email and name out of ID tokens: only the
	// UserInfo endpoint gives them (OIDC Core 5.4).
	ClaimsInUserInfo bool
}

// Tamper changes the next ID token that the token endpoint issues. The
// provider re-signs the token with its own key, so the signature is valid
// and only the changed claims are wrong. Zero fields leave a claim as it is.
type Tamper struct {
	Audience string // replaces "aud"
	Issuer   string // replaces "iss"
}

// Provider is a running test OpenID provider.
type Provider struct {
	issuer  string
	storage *storage
	srv     *http.Server
	ln      net.Listener
	done    chan struct{}

	mu     sync.Mutex
	tamper Tamper
}

// Start runs a provider on 127.0.0.1 on a random port. Close stops it.
func Start(o Options) (*Provider, error) {
	if o.ClientID == "" || o.ClientSecret == "" {
		return nil, errors.New("oidctest: ClientID and ClientSecret are required")
	}
	if len(o.RedirectURIs) == 0 {
		return nil, errors.New("oidctest: at least one redirect URI is required")
	}
	st, err := newStorage(&client{id: o.ClientID, secret: o.ClientSecret, redirectURIs: o.RedirectURIs, claimsInUserInfo: o.ClaimsInUserInfo})
	if err != nil {
		return nil, fmt.Errorf("oidctest: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("oidctest: listen: %w", err)
	}
	p := &Provider{
		issuer:  "http://" + ln.Addr().String(),
		storage: st,
		ln:      ln,
		done:    make(chan struct{}),
	}

	var cryptoKey [32]byte
	rand.Read(cryptoKey[:])
	cfg := &op.Config{
		CryptoKey:          cryptoKey,
		CryptoKeyId:        "oidctest",
		CodeMethodS256:     true,
		AuthMethodPost:     true,
		SupportedUILocales: []language.Tag{language.English},
	}
	// WithAllowInsecure: the issuer is plain http on loopback.
	prov, err := op.NewProvider(cfg, st, op.StaticIssuer(p.issuer), op.WithAllowInsecure())
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("oidctest: create provider: %w", err)
	}

	login := &loginForm{storage: st, callback: op.AuthCallbackURL(prov)}
	mux := http.NewServeMux()
	mux.Handle(loginPath, op.NewIssuerInterceptor(prov.IssuerFromRequest).Handler(login))
	mux.Handle(prov.TokenEndpoint().Relative(), p.tamperIDToken(prov))
	mux.Handle("/", prov)

	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		p.srv.Serve(ln)
	}()
	return p, nil
}

// Issuer is the provider's issuer URL, exactly as discovery and the ID
// tokens give it, e.g. "http://127.0.0.1:41234".
func (p *Provider) Issuer() string { return p.issuer }

// Tamper makes the next ID token issued at the token endpoint carry the
// given claims instead of the right ones.
func (p *Provider) Tamper(t Tamper) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tamper = t
}

// UserInfoSubject makes the UserInfo endpoint answer with sub as the
// subject (and that account's claims, if it is one) instead of the access
// token's own; "" restores the right answer.
func (p *Provider) UserInfoSubject(sub string) {
	p.storage.mu.Lock()
	defer p.storage.mu.Unlock()
	p.storage.userinfoSub = sub
}

// Close stops the provider and waits until its server has stopped.
func (p *Provider) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		p.srv.Close()
	}
	<-p.done
}
