package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// noGuests is a Guests whose VMs never answer: handlers that get past their
// rule fail there, which is enough to see they got past it.
type noGuests struct{}

func (noGuests) Client(*store.VM) (*guest.Client, error) {
	return nil, errors.New("guest unreachable (test)")
}

func (noGuests) Shared(*store.VM) (*guest.Client, error) {
	return nil, errors.New("guest unreachable (test)")
}

// people is a store with the admin, two users (alice, bob) with a token each,
// and a VM of alice's.
type people struct {
	store                    *store.Store
	admin, alice, bob, wrong string
	aliceID, bobID           string
}

func newPeople(t *testing.T) *people {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := &people{store: st, admin: store.NewSecret(), alice: store.NewSecret(), bob: store.NewSecret(), wrong: store.NewSecret(),
		aliceID: store.NewUserID(), bobID: store.NewUserID()}
	err = st.Update(func(tx *store.Tx) error {
		if _, err := tx.SetAdminToken(p.admin); err != nil {
			return err
		}
		if err := tx.SetFlagRules([]string{"@example.com"}); err != nil {
			return err
		}
		for _, u := range []struct{ id, email, secret string }{{p.aliceID, "alice@example.com", p.alice}, {p.bobID, "bob@example.com", p.bob}} {
			if err := tx.PutUser(&store.User{ID: u.id, Issuer: "https://op.test", Subject: u.email, Email: u.email}); err != nil {
				return err
			}
			if err := tx.PutToken(u.secret, &store.Token{ID: store.NewTokenID(), User: u.id}); err != nil {
				return err
			}
		}
		return tx.InsertVM(&store.VM{ID: "aaaa1111", Name: "alice-vm", Owner: p.aliceID, State: "running", IP: "172.16.0.50", Port: 3000})
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// routeServer is a Server over p with every part a route may need.
func routeServer(t *testing.T, p *people) http.Handler {
	t.Helper()
	fake := &fakeVMs{
		create: func(ctx context.Context, owner string, req api.CreateVMRequest, _ vm.Progress) (*store.VM, error) {
			return &store.VM{ID: "cccc3333", Name: "new-vm", Owner: owner, State: "running"}, nil
		},
		start:   func(ctx context.Context, name string, _ vm.Progress) (*store.VM, error) { return p.store.GetVM(name) },
		stop:    func(ctx context.Context, name string) (*store.VM, error) { return p.store.GetVM(name) },
		destroy: func(ctx context.Context, name string) error { return nil },
	}
	logins, err := auth.New(auth.Config{Issuer: "https://op.invalid", ClientID: "fcm", ClientSecret: "s", PublicURL: "https://fcm.example.com"}, p.store, slogTo(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Store: p.store, VMs: fake, Guests: noGuests{}, Auth: logins, Log: slogTo(io.Discard),
		Deploys: &deploy.Service{DataDir: t.TempDir(), Store: p.store, Guests: noGuests{}, Log: slogTo(io.Discard)}}
	return s.Handler()
}

// concrete turns a route pattern into a request on alice's VM.
func concrete(pattern string) (method, path string) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		method, path = "GET", pattern
	}
	r := strings.NewReplacer("{name}", "alice-vm", "{id}", "brook", "{fingerprint...}", "SHA256:abc",
		"{version}", "1", "{user}", "alice@example.com", "{domain}", "app.example.org")
	path = r.Replace(path)
	if path == "/git/" {
		path = "/git/alice-vm.git/info/refs?service=git-upload-pack"
	}
	return method, path
}

// publicRoutes are the routes anyone may call: a new one must be added here
// knowingly.
var publicRoutes = map[string]bool{
	"GET /health": true, "POST /v1/logins": true, "POST /v1/logins/{id}/token": true,
	"GET /login/{id}": true, "GET /oauth2/callback": true, "POST /login/{id}/confirm": true,
	"GET /login": true, "POST /session": true, "GET /releases/{file}": true, "GET /install.sh": true,
	"GET /static/console/{file...}": true,
	"GET /{$}":                      true, "GET /static/app.js": true, "GET /static/app.css": true,
}

// TestRoutes_EveryRouteUnderItsRule walks every route the router has, as
// each of {no token, a wrong token, alice, bob, admin}, on alice's VM: bob and
// the tokenless get 404/401 and nothing of hers; alice and the admin get past
// the rule.
func TestRoutes_EveryRouteUnderItsRule(t *testing.T) {
	p := newPeople(t)
	routes := (&Server{}).routes()
	if len(routes) < 39 {
		t.Fatalf("only %d routes in the table", len(routes))
	}
	callers := []struct{ name, token string }{{"none", ""}, {"wrong", p.wrong}, {"alice", p.alice}, {"bob", p.bob}, {"admin", p.admin}}
	notFoundRE := regexp.MustCompile(`no (vm|app) named \\?"alice-vm\\?"`)
	for pattern, rt := range routes {
		if rt.rule == ruleUnset {
			t.Errorf("%s: no rule", pattern)
			continue
		}
		if (rt.rule == rulePublic) != publicRoutes[pattern] {
			t.Errorf("%s: rule %s, but the public routes are %v", pattern, rt.rule, publicRoutes)
		}
		method, path := concrete(pattern)
		for _, c := range callers {
			// A fresh server each time: alice's destroy or stop must not
			// change what bob sees next.
			h := routeServer(t, p)
			req := httptest.NewRequest(method, path, bytes.NewReader([]byte("{}")))
			if c.token != "" {
				if rt.rule == ruleOwnAuth {
					req.SetBasicAuth("x", c.token)
				} else {
					req.Header.Set("Authorization", "Bearer "+c.token)
				}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			status, body := w.Code, w.Body.String()
			where := pattern + " as " + c.name
			if c.name != "alice" && c.name != "admin" && (strings.Contains(body, p.aliceID) || strings.Contains(body, "alice@example.com")) {
				t.Errorf("%s: %d leaks alice's data: %s", where, status, body)
			}
			switch {
			case pattern == "POST /internal/push":
				// Only the one-time token of a push in progress (none here) opens it.
				if status != http.StatusForbidden {
					t.Errorf("%s: %d %s, want 403", where, status, body)
				}
			case pattern == "/git/":
				// Git's protocol answers with an error git prints: the same
				// "no app named" as for a missing app.
				if c.name == "none" || c.name == "wrong" {
					if status != http.StatusUnauthorized {
						t.Errorf("%s: %d %s, want 401", where, status, body)
					}
				} else if got, want := notFoundRE.MatchString(body), c.name == "bob"; got != want {
					t.Errorf("%s: %d %s (refused: %v, want %v)", where, status, body, got, want)
				}
			case rt.rule == rulePublic:
				if status == http.StatusUnauthorized || status == http.StatusForbidden && pattern != "POST /v1/logins/{id}/token" {
					t.Errorf("%s: %d %s, want a public route", where, status, body)
				}
			case c.name == "none" || c.name == "wrong":
				if status != http.StatusUnauthorized {
					t.Errorf("%s: %d %s, want 401", where, status, body)
				}
			case rt.rule == ruleAdmin:
				want := c.name == "admin"
				if got := status != http.StatusForbidden && status != http.StatusUnauthorized; got != want {
					t.Errorf("%s: %d %s (admin only)", where, status, body)
				}
			case rt.rule == ruleVM:
				refused := status == http.StatusNotFound && notFoundRE.MatchString(body) || status == http.StatusUnauthorized
				if c.name == "bob" && (status != http.StatusNotFound || !notFoundRE.MatchString(body)) {
					t.Errorf("%s: %d %s, want 404 as for a missing VM", where, status, body)
				}
				if (c.name == "alice" || c.name == "admin") && refused {
					t.Errorf("%s: %d %s, want past the rule", where, status, body)
				}
			case rt.rule == ruleToken:
				if status == http.StatusUnauthorized || status == http.StatusForbidden {
					t.Errorf("%s: %d %s, want past the rule", where, status, body)
				}
				if c.name == "bob" && strings.Contains(body, "alice-vm") {
					t.Errorf("%s: bob sees alice's VM: %s", where, body)
				}
			}
		}
	}
}

// TestRoutes_MissingVMAndHiddenVMAnswerAlike: what bob learns of alice's VM
// is exactly what he learns of a VM that does not exist.
func TestRoutes_MissingVMAndHiddenVMAnswerAlike(t *testing.T) {
	p := newPeople(t)
	for pattern, rt := range (&Server{}).routes() {
		if rt.rule != ruleVM {
			continue
		}
		method, path := concrete(pattern)
		answer := func(path string) (int, string) {
			req := httptest.NewRequest(method, path, bytes.NewReader([]byte("{}")))
			req.Header.Set("Authorization", "Bearer "+p.bob)
			w := httptest.NewRecorder()
			routeServer(t, p).ServeHTTP(w, req)
			return w.Code, strings.ReplaceAll(w.Body.String(), "nosuch-vm", "alice-vm")
		}
		s1, b1 := answer(path)
		s2, b2 := answer(strings.Replace(path, "alice-vm", "nosuch-vm", 1))
		if s1 != s2 || b1 != b2 {
			t.Errorf("%s: alice's VM answers bob %d %s, a missing one %d %s", pattern, s1, b1, s2, b2)
		}
	}
}
