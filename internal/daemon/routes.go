package daemon

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/store"
)

// rule says who may call a route. Every route of the API has one, in routes:
// the table is the one place that decides, and a test walks all of it.
type rule int

const (
	// ruleUnset is no rule: a route without one is refused (500) and fails
	// the route walk test.
	ruleUnset rule = iota
	// rulePublic: anyone; the handler needs no caller (health, logins, the
	// login pages).
	rulePublic
	// ruleOwnAuth: the handler authenticates by the means of its protocol
	// (git's HTTP Basic with a token, a push's one-time token).
	ruleOwnAuth
	// ruleToken: any valid token; the handler shows only the caller's own.
	ruleToken
	// ruleVM: a valid token that may see the VM {name}: its owner, or the
	// admin. To anyone else the VM answers as a missing one does (404).
	ruleVM
	// ruleAdmin: the admin token only.
	ruleAdmin
)

func (r rule) String() string {
	return [...]string{"unset", "public", "own-auth", "token", "vm", "admin"}[r]
}

// route is one entry of the table: its rule and its handler (h, or raw for
// the handlers that are not the API's own).
type route struct {
	rule rule
	h    func(*Server, http.ResponseWriter, *http.Request, *store.Token)
	raw  http.Handler
	// use: the request uses its VM (a console, a command, a deploy): a
	// sleeping VM is woken first, and it counts as in use until the
	// request ends (see awake).
	use bool
	// audit names the change the route makes, recorded in the audit trail
	// once answered (auditActions; set by Handler); "": none.
	audit string
}

// routes is the API: pattern -> rule and handler.
func (s *Server) routes() map[string]route {
	m := s.apiRoutes()
	for _, more := range []map[string]route{s.webRoutes(), s.webConsoleRoutes(), s.downloadRoutes()} {
		for pattern, rt := range more {
			if _, dup := m[pattern]; dup {
				panic("route " + pattern + " twice")
			}
			m[pattern] = rt
		}
	}
	return m
}

// apiRoutes are the JSON API's routes, the logins' and git's.
func (s *Server) apiRoutes() map[string]route {
	return map[string]route{
		"GET /health": {rule: rulePublic, h: (*Server).health},

		"POST /v1/vms":                           {rule: ruleToken, h: (*Server).createVM},
		"GET /v1/vms":                            {rule: ruleToken, h: (*Server).listVMs},
		"GET /v1/vms/{name}":                     {rule: ruleVM, h: (*Server).getVM},
		"GET /v1/vms/{name}/stats":               {rule: ruleVM, h: (*Server).vmStats},
		"POST /v1/vms/{name}/start":              {rule: ruleVM, h: (*Server).startVM},
		"POST /v1/vms/{name}/stop":               {rule: ruleVM, h: (*Server).stopVM},
		"POST /v1/vms/{name}/suspend":            {rule: ruleVM, h: (*Server).suspendVM},
		"POST /v1/vms/{name}/resume":             {rule: ruleVM, h: (*Server).resumeVM},
		"POST /v1/vms/{name}/checkpoints":        {rule: ruleVM, h: (*Server).createCheckpoint},
		"GET /v1/vms/{name}/checkpoints":         {rule: ruleVM, h: (*Server).listCheckpoints},
		"DELETE /v1/vms/{name}/checkpoints/{id}": {rule: ruleVM, h: (*Server).removeCheckpoint},
		"POST /v1/vms/{name}/restore":            {rule: ruleVM, h: (*Server).restoreVM},
		"POST /v1/vms/{name}/fork":               {rule: ruleVM, h: (*Server).forkVM},
		"DELETE /v1/vms/{name}":                  {rule: ruleVM, h: (*Server).destroyVM},
		"GET /v1/vms/{name}/domains":             {rule: ruleVM, h: (*Server).listDomains},
		"POST /v1/vms/{name}/domains":            {rule: ruleVM, h: (*Server).addDomain},
		"DELETE /v1/vms/{name}/domains/{domain}": {rule: ruleVM, h: (*Server).removeDomain},
		"PATCH /v1/vms/{name}":                   {rule: ruleVM, h: (*Server).updateVM},

		"GET /v1/sessions":                        {rule: ruleToken, h: (*Server).listAllSessions},
		"GET /v1/vms/{name}/sessions":             {rule: ruleVM, h: (*Server).listVMSessions, use: true},
		"POST /v1/vms/{name}/sessions":            {rule: ruleVM, h: (*Server).createSession, use: true},
		"DELETE /v1/vms/{name}/sessions/{id}":     {rule: ruleVM, h: (*Server).killSession},
		"GET /v1/vms/{name}/sessions/{id}/attach": {rule: ruleVM, h: (*Server).attachSession, use: true},

		"GET /v1/keys":                     {rule: ruleToken, h: (*Server).listKeys},
		"POST /v1/keys":                    {rule: ruleToken, h: (*Server).addKey},
		"POST /v1/keys/challenge":          {rule: ruleToken, h: (*Server).keyChallenge},
		"DELETE /v1/keys/{fingerprint...}": {rule: ruleToken, h: (*Server).deleteKey},

		"GET /v1/vms/{name}/releases":                  {rule: ruleVM, h: (*Server).listReleases},
		"GET /v1/vms/{name}/releases/{version}/output": {rule: ruleVM, h: (*Server).releaseOutput},
		"POST /v1/vms/{name}/rollback":                 {rule: ruleVM, h: (*Server).rollback, use: true},
		"GET /v1/vms/{name}/config":                    {rule: ruleVM, h: (*Server).getConfig},
		"PATCH /v1/vms/{name}/config":                  {rule: ruleVM, h: (*Server).changeConfig, use: true},
		"GET /v1/vms/{name}/ps":                        {rule: ruleVM, h: (*Server).listProcesses, use: true},
		"POST /v1/vms/{name}/restart":                  {rule: ruleVM, h: (*Server).restartApp, use: true},
		"GET /v1/vms/{name}/logs":                      {rule: ruleVM, h: (*Server).logs, use: true},
		"POST /v1/vms/{name}/run":                      {rule: ruleVM, h: (*Server).run, use: true},

		"GET /v1/whoami":               {rule: ruleToken, h: (*Server).whoami},
		"GET /v1/events":               {rule: ruleToken, h: (*Server).listEvents},
		"GET /v1/tokens":               {rule: ruleToken, h: (*Server).listTokens},
		"DELETE /v1/tokens/{id}":       {rule: ruleToken, h: (*Server).revokeToken},
		"POST /v1/tokens/admin/rotate": {rule: ruleAdmin, h: (*Server).rotateToken},

		"GET /v1/users":           {rule: ruleAdmin, h: (*Server).listUsers},
		"POST /v1/users/allow":    {rule: ruleAdmin, h: (*Server).allowUsers},
		"POST /v1/users/deny":     {rule: ruleAdmin, h: (*Server).denyUsers},
		"DELETE /v1/users/{user}": {rule: ruleAdmin, h: (*Server).removeUser},

		// The admin's: they name every user's VMs.
		"GET /v1/images":        {rule: ruleAdmin, h: (*Server).listImages},
		"POST /v1/images/prune": {rule: ruleAdmin, h: (*Server).pruneImages},

		"POST /v1/logins":            {rule: rulePublic, h: (*Server).startLogin},
		"POST /v1/logins/{id}/token": {rule: rulePublic, h: (*Server).pollLogin},
		"GET /login/{id}":            {rule: rulePublic, h: (*Server).loginPage},
		"GET /oauth2/callback":       {rule: rulePublic, h: (*Server).loginCallback},
		"POST /login/{id}/confirm":   {rule: rulePublic, h: (*Server).loginConfirm},
		"GET /login":                 {rule: rulePublic, h: (*Server).webLogin},
		"POST /session":              {rule: rulePublic, h: (*Server).pasteToken},
		"POST /logout":               {rule: ruleToken, h: (*Server).webLogout},

		// Git authenticates with HTTP Basic (a token as the password); the
		// push hook with the one-time token of its push.
		"/git/":               {rule: ruleOwnAuth, raw: s.gitHandler()},
		"POST /internal/push": {rule: ruleOwnAuth, raw: s.pushHandler()},
	}
}

type vmKey struct{}

// guard runs a route under its rule.
func (s *Server) guard(rt route) http.Handler {
	if rt.raw != nil {
		return rt.raw
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch rt.rule {
		case ruleUnset:
			writeError(w, http.StatusInternalServerError, api.CodeInternal, "this route has no rule")
			return
		case rulePublic:
			rt.h(s, w, r, nil)
			return
		}
		tok, cookie, ok := s.authenticate(w, r)
		if !ok {
			return
		}
		s.versionHeader(w)
		// A browser's cookie goes with requests other sites make it send:
		// those may only read (GET), and a WebSocket checks its Origin.
		if cookie {
			if err := crossOrigin.Check(r); err != nil {
				writeError(w, http.StatusForbidden, api.CodeForbidden, "cross-origin request refused: "+err.Error())
				return
			}
		}
		switch rt.rule {
		case ruleAdmin:
			if !tok.Admin {
				writeError(w, http.StatusForbidden, api.CodeForbidden, "only the admin token may do this")
				return
			}
		case ruleVM:
			name := r.PathValue("name")
			v, err := s.Store.GetVM(name)
			if err != nil || !visible(tok, v) {
				writeError(w, http.StatusNotFound, api.CodeNotFound, "no vm named \""+name+"\"")
				return
			}
			if rt.use {
				woke, done, err := s.awake(r.Context(), v)
				if err != nil {
					w.Header().Set("Retry-After", "5")
					writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, fmt.Sprintf("vm %s could not be woken: %v", name, err))
					return
				}
				defer done()
				v = woke
			}
			r = r.WithContext(context.WithValue(r.Context(), vmKey{}, v))
		}
		if rt.audit != "" {
			s.audited(rt.audit, tok, w, r, func(w http.ResponseWriter, r *http.Request) { rt.h(s, w, r, tok) })
			return
		}
		rt.h(s, w, r, tok)
	})
}

// crossOrigin refuses state-changing requests a browser sends for another
// site (Sec-Fetch-Site, or Origin against Host).
var crossOrigin = http.NewCrossOriginProtection()

// authenticate checks the bearer token, or else a browser's session cookie
// (cookie reports which): a token of a user the allow-list still lets in, or
// the admin token. It notes when the token was last used (at most once a
// minute: a write per request would cost every request a sync).
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (tok *store.Token, cookie, ok bool) {
	secret, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !bearer || secret == "" {
		if secret = auth.SessionSecret(r); secret != "" {
			cookie = true
		} else {
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "missing token: run fcm login, or send Authorization: Bearer <token> (fcm reads FCM_TOKEN or ~/.fcm-token)")
			return nil, false, false
		}
	}
	err := s.Store.View(func(tx *store.Tx) (err error) { tok, _, err = tx.Authenticate(secret); return })
	if sw, ok := w.(*statusWriter); ok {
		sw.tokenFP = store.Fingerprint(secret)
		if err == nil {
			sw.tokenID = tok.ID
		}
	}
	if err != nil {
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "invalid token: it was revoked or expired, or its user removed or no longer allowed (fcm login gets a new one)")
		return nil, cookie, false
	}
	if now := time.Now(); now.Sub(tok.LastUsedAt) > time.Minute {
		if err := s.Store.Update(func(tx *store.Tx) error { return tx.TouchToken(secret, now) }); err != nil {
			s.logger().Warn("token last use", "token", tok.ID, "err", err)
		}
	}
	return tok, cookie, true
}

func (s *Server) gitHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Deploys == nil {
			writeError(w, http.StatusNotFound, api.CodeNotFound, "git push is not enabled on this daemon")
			return
		}
		s.Deploys.GitHandler().ServeHTTP(w, r)
	})
}

func (s *Server) pushHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Deploys == nil {
			writeError(w, http.StatusNotFound, api.CodeNotFound, "git push is not enabled on this daemon")
			return
		}
		s.Deploys.PushHandler().ServeHTTP(w, r)
	})
}
