package daemon

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/store"
)

// loginDisabled says how to enable logins, when they are not.
const loginDisabled = "this fcm daemon has no OIDC login configured: its admin starts it with --oidc-client-id and --oidc-client-secret (or GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET) and --allow for who may log in; until then use the admin token (sudo install -m 600 -o \"$USER\" /var/lib/firecracker/.token ~/.fcm-token)"

func (s *Server) loginEnabled(w http.ResponseWriter) bool {
	if s.Auth == nil {
		writeError(w, http.StatusNotImplemented, api.CodeLoginDisabled, loginDisabled)
		return false
	}
	return true
}

// startLogin is POST /v1/logins: a CLI begins a login.
func (s *Server) startLogin(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if !s.loginEnabled(w) {
		return
	}
	addr := clientAddr(r)
	if s.Auth.Limited(addr) {
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusTooManyRequests, api.CodeRateLimited, "too many login requests from your address: wait a minute and try again")
		return
	}
	var req api.LoginStartRequest
	if !decode(w, r, &req) {
		return
	}
	start, f := s.Auth.Start(addr, req)
	if f != nil {
		writeError(w, f.Status, f.Code, f.Message)
		return
	}
	writeJSON(w, http.StatusCreated, start)
}

// pollLogin is POST /v1/logins/{id}/token: the CLI asks whether the person
// has confirmed.
func (s *Server) pollLogin(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if !s.loginEnabled(w) {
		return
	}
	var req api.LoginPoll
	if !decode(w, r, &req) {
		return
	}
	res, f := s.Auth.Poll(r.PathValue("id"), req.PollToken, req.Grant)
	switch {
	case f != nil:
		writeError(w, f.Status, f.Code, f.Message)
	case res == nil:
		writeJSON(w, http.StatusAccepted, api.LoginStatus{Status: api.LoginPending})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.loginEnabled(w) && s.pageAllowed(w, r) {
		s.Auth.Begin(w, r)
	}
}

func (s *Server) loginCallback(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.loginEnabled(w) && s.pageAllowed(w, r) {
		s.Auth.Callback(w, r, clientAddr(r))
	}
}

// pageAllowed counts a login page's request against its client's rate,
// answering 429 when it is over.
func (s *Server) pageAllowed(w http.ResponseWriter, r *http.Request) bool {
	if s.Auth.Limited(clientAddr(r)) {
		s.Auth.TooMany(w)
		return false
	}
	return true
}

// clientAddr is the address of the person behind r: the one the local proxy
// (Caddy) appended last to X-Forwarded-For, trusted from loopback only, else
// the peer's.
func clientAddr(r *http.Request) string {
	if fwd := forwardedFor(r); fwd != "" {
		parts := strings.Split(fwd, ",")
		if a := strings.TrimSpace(parts[len(parts)-1]); net.ParseIP(a) != nil {
			return a
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) loginConfirm(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.loginEnabled(w) {
		s.Auth.Confirm(w, r)
	}
}

// webLogin is GET /login: "Sign in" on the status page.
func (s *Server) webLogin(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.Auth == nil {
		http.Redirect(w, r, "/?error=login_disabled", http.StatusSeeOther)
		return
	}
	if s.pageAllowed(w, r) {
		s.Auth.BeginWeb(w, r, clientAddr(r))
	}
}

// pasteToken is POST /session: the status page's form for a token (the admin
// token, on a host without OIDC). A valid one becomes the browser's session.
func (s *Server) pasteToken(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if err := crossOrigin.Check(r); err != nil {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "cross-origin request refused: "+err.Error())
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	pasted := strings.TrimSpace(r.PostFormValue("token"))
	// The cookie gets a web session of its own, derived from the pasted
	// token (it acts as that token and ends with it, or after
	// auth.SessionTTL, or at sign-out), never the pasted secret itself.
	session := store.NewSecret()
	var tok *store.Token
	err := s.Store.Update(func(tx *store.Tx) error {
		parent, _, err := tx.Authenticate(pasted)
		if err != nil {
			return err
		}
		if parent.Parent != "" {
			return errors.New("a web session's token cannot be pasted")
		}
		expires := time.Now().Add(auth.SessionTTL).UTC()
		if !parent.ExpiresAt.IsZero() && parent.ExpiresAt.Before(expires) {
			expires = parent.ExpiresAt
		}
		tok = &store.Token{ID: store.NewTokenID(), Name: auth.WebSessionName, Admin: parent.Admin, User: parent.User,
			Parent: parent.ID, ExpiresAt: expires}
		return tx.PutToken(session, tok)
	})
	if err != nil || pasted == "" {
		http.Redirect(w, r, "/?error=invalid_token", http.StatusSeeOther)
		return
	}
	s.logger().Info("web session from a pasted token", "token", tok.ID, "parent", tok.Parent)
	auth.SetSessionCookie(w, session, time.Until(tok.ExpiresAt), s.secureCookies(r))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// webLogout is POST /logout: the browser's session ends and its web
// session's token is revoked (a pasted token's derived one too; the pasted
// token itself lives on).
func (s *Server) webLogout(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	if tok.Name == auth.WebSessionName {
		err := s.Store.Update(func(tx *store.Tx) error {
			_, err := tx.DeleteTokens(func(t *store.Token) bool { return t.ID == tok.ID })
			return err
		})
		if err != nil {
			s.fail(w, err)
			return
		}
	}
	auth.SetSessionCookie(w, "", 0, s.secureCookies(r))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// secureCookies reports whether the browser reached the daemon over HTTPS
// (Caddy says so from loopback).
func (s *Server) secureCookies(r *http.Request) bool { return auth.OverHTTPS(r) }
