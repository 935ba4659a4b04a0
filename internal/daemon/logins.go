package daemon

import (
	"net/http"

	"github.com/fcmhost/fcm/internal/api"
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
	start, f := s.Auth.Start()
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
	res, f := s.Auth.Poll(r.PathValue("id"), req.PollToken)
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
	if s.loginEnabled(w) {
		s.Auth.Begin(w, r)
	}
}

func (s *Server) loginCallback(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.loginEnabled(w) {
		s.Auth.Callback(w, r)
	}
}

func (s *Server) loginConfirm(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.loginEnabled(w) {
		s.Auth.Confirm(w, r)
	}
}
