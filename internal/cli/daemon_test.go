package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// usersDaemon answers the routes of internal/api/users.go (and GET /v1/vms)
// as the contract says: statuses, bodies and error codes. It keeps its
// state in memory and records every request.
type usersDaemon struct {
	srv *httptest.Server

	mu     sync.Mutex
	reqs   []string
	oidc   bool
	tokens []*fakeToken
	users  []*api.User
	rules  []api.AccessRule
	logins map[string]*fakeLogin
	nLogin int
	// loginURL replaces the login URL the daemon answers (<srv>/login/<id>).
	loginURL string
	vms      []api.VM
	quota    int // VMs a user may have; 0: no limit

	// The person who signs in at the provider for the next login, and how
	// many polls are answered "pending" before they confirm the code.
	signIn       api.User
	pendingPolls int
	expireLogins bool // every poll answers 410 expired
}

type fakeToken struct {
	api.Token
	secret string
}

type fakeLogin struct {
	pollToken string
	polls     int
	port      int    // the CLI's loopback port; 0: a typed code
	grant     string // what a poll must carry once "confirmed"
	sent      bool   // the grant went to the CLI's port
}

// fakeCode is the code the fake daemon's "page" shows for --no-browser.
const fakeCode = "WDJB-MJHT"

const adminSecret = "fcm_admin_secret"

func newUsersDaemon(t *testing.T) *usersDaemon {
	d := &usersDaemon{oidc: true, logins: map[string]*fakeLogin{},
		signIn: api.User{Email: "alice@example.com", Name: "Alice Liddell", Issuer: "https://accounts.google.com", Subject: "1001"}}
	d.tokens = append(d.tokens, &fakeToken{Token: api.Token{ID: "t_admin", Name: "admin", Admin: true, CreatedAt: time.Now().Add(-48 * time.Hour)}, secret: adminSecret})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/logins", d.startLogin)
	mux.HandleFunc("POST /v1/logins/{id}/token", d.pollLogin)
	mux.HandleFunc("GET /v1/whoami", d.auth(false, d.whoami))
	mux.HandleFunc("GET /v1/tokens", d.auth(false, d.listTokens))
	mux.HandleFunc("DELETE /v1/tokens/{id}", d.auth(false, d.revokeToken))
	mux.HandleFunc("GET /v1/users", d.auth(true, func(w http.ResponseWriter, r *http.Request, _ *fakeToken) { d.writeUsers(w) }))
	mux.HandleFunc("POST /v1/users/allow", d.auth(true, d.addRule(true)))
	mux.HandleFunc("POST /v1/users/deny", d.auth(true, d.addRule(false)))
	mux.HandleFunc("DELETE /v1/users/{user}", d.auth(true, d.removeUser))
	mux.HandleFunc("GET /v1/vms", d.auth(false, d.listVMs))
	mux.HandleFunc("POST /v1/vms", d.auth(false, d.createVM))
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.reqs = append(d.reqs, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization")))
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(d.srv.Close)
	return d
}

// requests returns the requests since the last call, one a line.
func (d *usersDaemon) requests() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := strings.Join(d.reqs, "\n")
	d.reqs = nil
	return r
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.Error{Message: msg, Code: code})
}

// addUser makes a user with a token (as a login would) and returns its secret.
func (d *usersDaemon) addUser(u api.User) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.newToken(d.user(u)).secret
}

func (d *usersDaemon) user(u api.User) *api.User {
	for _, have := range d.users {
		if have.Email == u.Email {
			return have
		}
	}
	u.ID = fmt.Sprintf("u_%d", len(d.users)+1)
	u.Role, u.CreatedAt = api.RoleUser, time.Now()
	d.users = append(d.users, &u)
	return &u
}

func (d *usersDaemon) newToken(u *api.User) *fakeToken {
	n := len(d.tokens)
	t := &fakeToken{Token: api.Token{ID: fmt.Sprintf("t_%08x", 0x0123abcd+n), User: u.Email, CreatedAt: time.Now(),
		ExpiresAt: time.Now().Add(90*24*time.Hour + time.Hour)},
		secret: fmt.Sprintf("fcm_user_secret_%d", n)}
	d.tokens = append(d.tokens, t)
	return t
}

// allowed applies the allow-list: email beats @domain beats *, deny beats
// allow at the same rank, no matching rule lets nobody in.
func (d *usersDaemon) allowed(email string) bool {
	domain := email[strings.LastIndex(email, "@"):]
	for _, pattern := range []string{email, domain, "*"} {
		allow, deny := false, false
		for _, r := range d.rules {
			if r.Pattern == pattern {
				allow, deny = allow || r.Allow, deny || !r.Allow
			}
		}
		if deny || allow {
			return !deny
		}
	}
	return false
}

func (d *usersDaemon) startLogin(w http.ResponseWriter, r *http.Request) {
	if !d.oidc {
		writeErr(w, http.StatusNotImplemented, api.CodeLoginDisabled, "logins are off: start the daemon with --oidc-client-id and --oidc-client-secret (see fcm daemon --help)")
		return
	}
	d.nLogin++
	id := fmt.Sprintf("l_%d", d.nLogin)
	var req api.LoginStartRequest
	json.NewDecoder(r.Body).Decode(&req)
	l := &fakeLogin{pollToken: "poll_" + id, port: req.Port, grant: fakeCode}
	if req.Port != 0 {
		l.grant = "grant_" + id
	}
	d.logins[id] = l
	loginURL := d.srv.URL + "/login/" + id
	if d.loginURL != "" {
		loginURL = d.loginURL
	}
	writeJSON(w, http.StatusCreated, api.LoginStart{ID: id, URL: loginURL,
		PollToken: "poll_" + id, Interval: 5, ExpiresAt: time.Now().Add(10 * time.Minute)})
}

func (d *usersDaemon) pollLogin(w http.ResponseWriter, r *http.Request) {
	var body api.LoginPoll
	json.NewDecoder(r.Body).Decode(&body)
	l := d.logins[r.PathValue("id")]
	switch {
	case l == nil || l.pollToken != body.PollToken:
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no such login")
		return
	case d.expireLogins:
		writeErr(w, http.StatusGone, api.CodeExpired, "the login expired")
		return
	}
	if l.polls++; l.polls <= d.pendingPolls {
		writeJSON(w, http.StatusAccepted, api.LoginStatus{Status: api.LoginPending})
		return
	}
	// The person confirmed: the browser brings the grant to the CLI's port
	// (once); a poll without the right grant stays pending.
	if l.port != 0 && !l.sent {
		l.sent = true
		go func() {
			if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/done?grant=%s", l.port, l.grant)); err == nil {
				resp.Body.Close()
			}
		}()
	}
	switch {
	case body.Grant == "":
		writeJSON(w, http.StatusAccepted, api.LoginStatus{Status: api.LoginPending})
		return
	case body.Grant != l.grant:
		writeErr(w, http.StatusForbidden, api.CodeForbidden, "wrong code")
		return
	}
	delete(d.logins, r.PathValue("id"))
	if !d.allowed(d.signIn.Email) {
		writeErr(w, http.StatusForbidden, api.CodeNotAllowed, d.signIn.Email+" may not log in to this daemon: ask its admin to run fcm users allow "+d.signIn.Email)
		return
	}
	u := d.user(d.signIn)
	u.LastLoginAt = time.Now()
	t := d.newToken(u)
	writeJSON(w, http.StatusOK, api.LoginResult{Token: t.secret, User: *u})
}

// auth finds the caller's token: 401 without a valid one, 403 when the
// route is the admin's and the caller is not.
func (d *usersDaemon) auth(admin bool, h func(http.ResponseWriter, *http.Request, *fakeToken)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		secret := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		i := slices.IndexFunc(d.tokens, func(t *fakeToken) bool { return t.secret == secret })
		if secret == "" || i < 0 {
			writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "invalid token: it was revoked or never existed (run fcm login)")
			return
		}
		if admin && !d.tokens[i].Admin {
			writeErr(w, http.StatusForbidden, api.CodeForbidden, "only the admin token may do this")
			return
		}
		d.tokens[i].LastUsedAt = time.Now()
		h(w, r, d.tokens[i])
	}
}

func (d *usersDaemon) whoami(w http.ResponseWriter, r *http.Request, t *fakeToken) {
	me := api.WhoAmI{Role: api.RoleAdmin, TokenID: t.ID}
	if !t.Admin {
		me.Role, me.User = api.RoleUser, d.user(api.User{Email: t.User})
	}
	writeJSON(w, http.StatusOK, me)
}

func (d *usersDaemon) listTokens(w http.ResponseWriter, r *http.Request, caller *fakeToken) {
	var out api.ListTokensResponse
	for _, t := range d.tokens {
		if caller.Admin || t.User == caller.User && !t.Admin {
			tok := t.Token
			tok.Current = t == caller
			out.Tokens = append(out.Tokens, tok)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *usersDaemon) revokeToken(w http.ResponseWriter, r *http.Request, caller *fakeToken) {
	id := r.PathValue("id")
	if id == "current" {
		id = caller.ID
	}
	i := slices.IndexFunc(d.tokens, func(t *fakeToken) bool { return t.ID == id && (caller.Admin || t.User == caller.User) })
	switch {
	case i < 0:
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no token "+id)
	case d.tokens[i].Admin:
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "the admin token is not revoked: rotate it with fcm token rotate")
	default:
		d.tokens = slices.Delete(d.tokens, i, i+1)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (d *usersDaemon) writeUsers(w http.ResponseWriter) {
	out := api.ListUsersResponse{Rules: d.rules, OIDC: d.oidc, Users: []api.User{}}
	for _, u := range d.users {
		c := *u
		c.Allowed, c.Tokens, c.VMs = d.allowed(u.Email), 0, nil
		for _, t := range d.tokens {
			if t.User == u.Email {
				c.Tokens++
			}
		}
		for _, v := range d.vms {
			if v.Owner == u.Email {
				c.VMs = append(c.VMs, v.Name)
			}
		}
		out.Users = append(out.Users, c)
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *usersDaemon) addRule(allow bool) func(http.ResponseWriter, *http.Request, *fakeToken) {
	return func(w http.ResponseWriter, r *http.Request, _ *fakeToken) {
		var req api.AccessRequest
		json.NewDecoder(r.Body).Decode(&req)
		if p := req.Pattern; p != "*" && !strings.Contains(p, "@") {
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("%q is not an email, @domain or *", p))
			return
		}
		d.rules = slices.DeleteFunc(d.rules, func(ar api.AccessRule) bool { return ar.Pattern == req.Pattern && ar.Source == "api" })
		d.rules = append(d.rules, api.AccessRule{Pattern: req.Pattern, Allow: allow, Source: "api"})
		d.writeUsers(w)
	}
}

func (d *usersDaemon) removeUser(w http.ResponseWriter, r *http.Request, _ *fakeToken) {
	who, vms := r.PathValue("user"), r.URL.Query().Get("vms")
	i := slices.IndexFunc(d.users, func(u *api.User) bool { return u.Email == who || u.ID == who })
	if i < 0 {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no user "+who)
		return
	}
	if vms != "" && vms != "destroy" && vms != "keep" {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "vms must be destroy or keep")
		return
	}
	u := d.users[i]
	var owned []string
	for _, v := range d.vms {
		if v.Owner == u.Email {
			owned = append(owned, v.Name)
		}
	}
	if len(owned) > 0 && vms == "" {
		writeErr(w, http.StatusConflict, api.CodeHasVMs, fmt.Sprintf("%s owns %d VMs: say what to do with them (vms=destroy or keep)", u.Email, len(owned)))
		return
	}
	resp := api.RemoveUserResponse{User: *u}
	d.tokens = slices.DeleteFunc(d.tokens, func(t *fakeToken) bool {
		if t.User == u.Email {
			resp.TokensRevoked++
		}
		return t.User == u.Email
	})
	if vms == "destroy" {
		resp.VMsDestroyed = owned
		d.vms = slices.DeleteFunc(d.vms, func(v api.VM) bool { return v.Owner == u.Email })
	} else {
		resp.VMsKept = owned
		for i := range d.vms {
			if d.vms[i].Owner == u.Email {
				d.vms[i].Owner = "admin"
			}
		}
	}
	d.users = slices.Delete(d.users, i, i+1)
	writeJSON(w, http.StatusOK, resp)
}

func (d *usersDaemon) listVMs(w http.ResponseWriter, r *http.Request, caller *fakeToken) {
	out := api.ListVMsResponse{VMs: []api.VM{}}
	for _, v := range d.vms {
		switch {
		case caller.Admin:
			out.VMs = append(out.VMs, v)
		case v.Owner == caller.User:
			v.Owner = "" // told to the admin only
			out.VMs = append(out.VMs, v)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *usersDaemon) createVM(w http.ResponseWriter, r *http.Request, caller *fakeToken) {
	n := 0
	for _, v := range d.vms {
		if v.Owner == caller.User {
			n++
		}
	}
	if !caller.Admin && d.quota > 0 && n >= d.quota {
		writeErr(w, http.StatusForbidden, api.CodeQuota, fmt.Sprintf("you have %d VMs, the most this daemon allows a user (--max-vms-per-user): destroy one first", n))
		return
	}
	writeErr(w, http.StatusNotImplemented, api.CodeInternal, "the fake daemon creates no VMs")
}

// TestDaemonDefaults: fcm daemon suspends idle VMs with a public URL after
// 5 minutes unless told otherwise, as its --help says.
func TestDaemonDefaults(t *testing.T) {
	f := newDaemonCmd().Flags()
	for name, want := range map[string]string{"suspend": "on", "suspend-after": "5m", "standbys": "4", "disk-overcommit": "1", "store": "auto", "keep-checkpoints": "20"} {
		if got := f.Lookup(name).DefValue; got != want {
			t.Errorf("--%s defaults to %q, want %q", name, got, want)
		}
	}
}
