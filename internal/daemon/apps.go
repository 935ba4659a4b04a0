package daemon

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/store"
)

// Handlers of an app's releases, config vars, processes, logs and one-off
// commands; each runs through the deploy service.

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	rels, err := s.Deploys.Releases(v)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ListReleasesResponse{Releases: rels})
}

// releaseOutput answers what a release printed, as text.
func (s *Server) releaseOutput(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	version, err := strconv.Atoi(strings.TrimPrefix(r.PathValue("version"), "v"))
	if err != nil || version <= 0 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "a release is v1, v2, ...")
		return
	}
	f, err := s.Deploys.Output(v, version)
	if err != nil {
		s.fail(w, err)
		return
	}
	defer f.Close()
	// From the file, in pieces (and ranges): never the whole in memory.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	http.ServeContent(w, r, "", time.Time{}, f)
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.RollbackRequest
	if !decode(w, r, &req) {
		return
	}
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	rel, err := s.Deploys.Rollback(r.Context(), v, deploy.Person(s.Store, tok), req.Version)
	if rel != nil {
		noteDetail(r, fmt.Sprintf("v%d: %s", rel.Version, rel.Description)) // "v6: Rollback to v1"
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rel)
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	cfg, err := s.Deploys.Config(v)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Config{Vars: cfg})
}

func (s *Server) changeConfig(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.ConfigChange
	if !decode(w, r, &req) {
		return
	}
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	if n := noteOf(r); n != nil {
		n.detail = configNames(req) // names only: values may be secrets
	}
	cfg, err := s.Deploys.SetConfig(r.Context(), v, deploy.Person(s.Store, tok), req)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cfg)
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, _, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	procs, err := s.Deploys.PS(r.Context(), v)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ListProcessesResponse{Processes: procs})
}

func (s *Server) restartApp(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, _, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	if err := s.Deploys.Restart(r.Context(), v); err != nil {
		s.fail(w, err)
		return
	}
	procs, err := s.Deploys.PS(r.Context(), v)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ListProcessesResponse{Processes: procs})
}

// logs streams the app's log as text: ?lines=N (default 100), ?follow=1.
func (s *Server) logs(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, _, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	n := 100
	if q := r.URL.Query().Get("lines"); q != "" {
		var err error
		if n, err = strconv.Atoi(q); err != nil || n < 0 || n > 100000 {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "lines must be a number from 0 to 100000")
			return
		}
	}
	follow := r.URL.Query().Get("follow") == "1"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	// A follow ends once the token's access does (revoked, user removed or
	// denied, the VM gone or given to another).
	ctx, done := s.liveContext(r.Context(), tok, v.ID)
	defer done()
	if err := s.Deploys.Logs(ctx, v, n, follow, deploy.ClientWriter{W: w}); err != nil {
		s.logger().Warn("logs", "vm", v.Name, "err", err)
	}
}

// run streams a one-off command's output; the trailer Fcm-Exit is its status.
func (s *Server) run(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.RunRequest
	if !decode(w, r, &req) {
		return
	}
	v, _, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	if len(req.Command) == 0 {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "no command to run")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Trailer", "Fcm-Exit")
	w.WriteHeader(http.StatusOK)
	code, err := s.Deploys.Run(r.Context(), v, req.Command, deploy.ClientWriter{W: w})
	if err != nil {
		s.logger().Warn("run", "vm", v.Name, "err", err)
		code = 255
	}
	w.Header().Set("Fcm-Exit", strconv.Itoa(code))
}
