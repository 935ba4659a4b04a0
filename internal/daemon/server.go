// Package daemon is fcm's HTTP API: routes, token authentication, JSON errors,
// and progress streaming, over the vm lifecycle manager and the store.
package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/console"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/metrics"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/usage"
	"github.com/fcmhost/fcm/internal/vm"
)

// Lifecycle is what the handlers need of the vm manager (a narrow interface so
// the handlers can be tested without VMs).
type Lifecycle interface {
	// CreateFor holds a user's create to their quota, checked as the VM is
	// reserved (so concurrent creates cannot all pass).
	CreateFor(ctx context.Context, owner vm.Owner, req api.CreateVMRequest, progress vm.Progress) (*store.VM, error)
	// Start, Stop and Destroy act on the VM named name only while it has the id
	// the handler looked up (and checked the owner of); "" is any.
	Start(ctx context.Context, name, id string, progress vm.Progress) (*store.VM, error)
	Stop(ctx context.Context, name, id string) (*store.VM, error)
	Destroy(ctx context.Context, name, id string) error
}

var _ Lifecycle = (*vm.Manager)(nil)

// Sleeper is a Lifecycle that can also suspend VMs to disk and wake them.
type Sleeper interface {
	Suspend(ctx context.Context, name, id string) (*store.VM, error)
	Wake(ctx context.Context, name, id string) (*store.VM, error)
}

var _ Sleeper = (*vm.Manager)(nil)

// Updater changes a VM's settings in place.
type Updater interface {
	SetSuspendAfter(name, id string, d time.Duration) (*store.VM, error)
}

var _ Updater = (*vm.Manager)(nil)

// Server serves the API.
type Server struct {
	Store      *store.Store
	VMs        Lifecycle
	Guests     Guests
	Images     Images           // the stored guest images; nil: none (503)
	Consoles   *console.Hubs    // attached console sessions; nil: made on first use
	Edge       *edge.Reconciler // routes in Caddy; nil: no edge
	Deploys    *deploy.Service  // git push deploys; nil: none
	AdminToken *AdminToken      // the admin token's file, for rotation; nil: none
	Auth       *auth.Service    // OIDC logins; nil: not configured
	// ReleasesDir holds the client downloads (make release's tarballs and
	// SHA256SUMS) served at /releases/; "": none.
	ReleasesDir string
	// MaxVMsPerUser is how many VMs a user (not the admin) may have, and
	// MaxMemoryPerUser and MaxCPUsPerUser how much memory (MiB) and how many
	// vCPUs all their VMs may have together; 0: no limit.
	MaxVMsPerUser    int
	MaxMemoryPerUser int
	MaxCPUsPerUser   int
	Version          string
	Hypervisor       string
	Log              *slog.Logger
	// Metrics counts the API's requests by route (fcm daemon
	// --metrics-listen); nil: none.
	Metrics *metrics.Metrics
	// Usage keeps the running VMs' last hour of usage; nil: no history.
	Usage *usage.Sampler
	// Resolver answers whether a custom domain points at this host (fcm
	// daemon --resolver); nil: the system's.
	Resolver *net.Resolver

	consolesOnce sync.Once
	live         liveConns     // console WebSockets and log follows, ended on revocation
	keyProofs    keyChallenges // pending challenges of fcm keys add

	wkOnce sync.Once
	wk     *waker // wakes sleeping VMs (see waker)
}

// Handler returns the API's routes: the table in routes, each under its rule.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for pattern, rt := range s.routes() {
		rt.audit = auditAction(pattern)
		mux.Handle(pattern, s.counted(pattern, s.guard(rt)))
	}
	mux.Handle("/", s.counted("unmatched", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})))
	apiH := bodyDeadline(mux)
	wk := s.waker()
	return s.logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.isWake(r) {
			wk.ServeHTTP(w, r) // a request for a sleeping VM, from Caddy
			return
		}
		apiH.ServeHTTP(w, r)
	}))
}

// statusWriter records, for the request log, the status sent and who asked.
type statusWriter struct {
	http.ResponseWriter
	status  int
	tokenID string // the token's id, when it was valid
	tokenFP string // store.Fingerprint of the secret sent, valid or not
}

func (w *statusWriter) WriteHeader(code int)        { w.status = code; w.ResponseWriter.WriteHeader(code) }
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets WebSocket upgrades through the logging wrapper.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	w.status = http.StatusSwitchingProtocols
	return h.Hijack()
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// counted counts each request of route pattern in the metrics, with the
// status it was answered with (the request log's statusWriter has it).
func (s *Server) counted(pattern string, h http.Handler) http.Handler {
	if s.Metrics == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		code := http.StatusOK
		for rw := w; rw != nil; {
			if sw, ok := rw.(*statusWriter); ok {
				code = sw.status
				break
			}
			u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
			if !ok {
				break
			}
			rw = u.Unwrap()
		}
		s.Metrics.Request(pattern, code)
	})
}

// logged writes one line per request: who (remote address, the client
// Caddy forwarded for, the token's id and fingerprint, never its secret), what
// (method, path), and how it went (status, time taken).
func (s *Server) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		apiHeaders(w)
		sw := &statusWriter{ResponseWriter: w, status: 200}
		h.ServeHTTP(sw, r)
		if r.URL.Path == "/health" {
			return
		}
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", sw.status,
			"took", time.Since(start).Round(time.Millisecond), "remote", r.RemoteAddr}
		if ff := forwardedFor(r); ff != "" {
			attrs = append(attrs, "forwarded_for", ff)
		}
		if sw.tokenFP != "" {
			attrs = append(attrs, "token", sw.tokenID, "token_fp", sw.tokenFP)
		}
		s.logger().Info("request", attrs...)
	})
}

// fromLoopback reports whether the request's connection comes from this host.
func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// forwardedFor is the X-Forwarded-For a local proxy (Caddy) set; from
// anywhere else the header is the client's own claim and is not trusted.
func forwardedFor(r *http.Request) string {
	if !fromLoopback(r) {
		return ""
	}
	return strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
}

func (s *Server) logger() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// health says the daemon is up. Version and hypervisor are for this host's
// own clients (loopback, not through Caddy) and for valid tokens only: to the
// internet, through the edge, the answer is no fingerprint.
func (s *Server) health(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	h := api.Health{Status: "ok"}
	if s.trusted(r) {
		h.Version, h.Hypervisor = s.Version, s.Hypervisor
	}
	writeJSON(w, http.StatusOK, h)
}

// trusted reports whether r comes from this host directly or carries a valid
// token.
func (s *Server) trusted(r *http.Request) bool {
	if fromLoopback(r) && r.Header.Get("X-Forwarded-For") == "" && r.Header.Get("Forwarded") == "" {
		return true
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || secret == "" {
		return false
	}
	return s.Store.View(func(tx *store.Tx) error { _, _, err := tx.Authenticate(secret); return err }) == nil
}

// ownerNames returns how VMs' owners are shown to tok: by email (or
// "admin") to the admin, not at all to users (they see only their own).
func (s *Server) ownerNames(tok *store.Token) func(*store.VM) string {
	if !tok.Admin {
		return func(*store.VM) string { return "" }
	}
	var emails map[string]string
	if err := s.Store.View(func(tx *store.Tx) (err error) { emails, err = userEmails(tx); return }); err != nil {
		s.logger().Warn("list users", "err", err)
	}
	return func(v *store.VM) string { return ownerName(emails, v.Owner) }
}

// visible reports whether tok may see vm: its owner, or an admin.
func visible(tok *store.Token, v *store.VM) bool { return tok.Admin || v.Owner == tok.Owner() }

func (s *Server) lookup(w http.ResponseWriter, r *http.Request, tok *store.Token) (*store.VM, bool) {
	v, ok := r.Context().Value(vmKey{}).(*store.VM)
	if !ok {
		// A handler of a route whose rule is not ruleVM: a mistake in the table.
		writeError(w, http.StatusInternalServerError, api.CodeInternal, "route has no vm rule")
		return nil, false
	}
	return v, true
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	vms, err := s.Store.ListVMs()
	if err != nil {
		s.fail(w, err)
		return
	}
	owners := s.ownerNames(tok)
	// An api.ListVMsResponse, written a VM at a time: with a thousand VMs the
	// answer is 300 KiB, which one Encode would build in memory first.
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	bw.WriteString(`{"vms":[`)
	sep := ""
	for _, v := range vms {
		if visible(tok, v) {
			a := s.toAPI(v)
			a.Owner = owners(v)
			bw.WriteString(sep)
			enc.Encode(a)
			sep = ","
		}
	}
	bw.WriteString("]}\n")
	bw.Flush()
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	if v, ok := s.lookup(w, r, tok); ok {
		a := s.toAPI(v)
		a.Owner = s.ownerNames(tok)(v)
		writeJSON(w, http.StatusOK, a)
	}
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.CreateVMRequest
	if !decode(w, r, &req) {
		return
	}
	// The create goes on if the client goes away: nothing is left half-made
	// either way, and a finished VM is not thrown away for a dropped connection.
	ctx := context.WithoutCancel(r.Context())
	st := newStream(w, r)
	v, err := s.VMs.CreateFor(ctx, s.ownerOf(tok), req, st.progress)
	if err == nil && s.Deploys != nil {
		if rerr := s.Deploys.EnsureRepo(ctx, v.ID); rerr != nil {
			s.logger().Error("git repository", "vm", v.Name, "err", rerr)
		}
	}
	st.finish(s, v, err, http.StatusCreated)
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	st := newStream(w, r)
	v, err := s.VMs.Start(context.WithoutCancel(r.Context()), found.Name, found.ID, st.progress)
	st.finish(s, v, err, http.StatusOK)
}

func (s *Server) stopVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	v, err := s.VMs.Stop(context.WithoutCancel(r.Context()), found.Name, found.ID)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.closeConsoles(v, "the VM stopped")
	s.routeChanged(nil, v)
	writeJSON(w, http.StatusOK, s.toAPI(v))
}

// suspendVM writes a running VM to disk and ends its hypervisor.
func (s *Server) suspendVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	s.sleepOrWake(w, r, tok, func(sl Sleeper, ctx context.Context, name, id string) (*store.VM, error) {
		return sl.Suspend(ctx, name, id)
	})
}

// updateVM changes a VM's settings: how long it may sit idle before it is
// suspended.
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.UpdateVMRequest
	if !decode(w, r, &req) {
		return
	}
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	up, ok := s.VMs.(Updater)
	if !ok || req.SuspendAfter == nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "nothing to change: give suspend_after")
		return
	}
	d, err := api.ParseSuspendAfter(*req.SuspendAfter)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	v, err := up.SetSuspendAfter(found.Name, found.ID, d)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toAPI(v))
}

// resumeVM wakes a suspended VM where it was.
func (s *Server) resumeVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	s.sleepOrWake(w, r, tok, func(sl Sleeper, ctx context.Context, name, id string) (*store.VM, error) {
		return sl.Wake(ctx, name, id)
	})
}

func (s *Server) sleepOrWake(w http.ResponseWriter, r *http.Request, tok *store.Token, op func(Sleeper, context.Context, string, string) (*store.VM, error)) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	sl, ok := s.VMs.(Sleeper)
	if !ok {
		s.fail(w, fmt.Errorf("%w: this daemon cannot suspend vms", vm.ErrInvalid))
		return
	}
	v, err := op(sl, context.WithoutCancel(r.Context()), found.Name, found.ID)
	if err != nil {
		s.fail(w, err)
		return
	}
	if v.State == api.StateSuspended {
		s.closeConsoles(v, "the VM was suspended: reconnecting wakes it")
	}
	s.routeChanged(nil, v) // to the waker while it sleeps, straight to it when it runs
	writeJSON(w, http.StatusOK, s.toAPI(v))
}

func (s *Server) destroyVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	if err := s.destroy(r.Context(), v); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// stream sends progress as newline-delimited JSON when the client asked for it
// (Accept: application/x-ndjson). The status line is written with the first
// event, so an error before any progress is still a plain 4xx JSON error.
type stream struct {
	w       http.ResponseWriter
	note    *auditNote // the request's audit note, if its route records one
	enabled bool
	started bool
	begin   time.Time
	mu      sync.Mutex
}

func newStream(w http.ResponseWriter, r *http.Request) *stream {
	return &stream{w: w, note: noteOf(r), enabled: strings.Contains(r.Header.Get("Accept"), "application/x-ndjson"), begin: time.Now()}
}

func (st *stream) send(ev api.Event) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.started {
		st.w.Header().Set("Content-Type", "application/x-ndjson")
		st.w.WriteHeader(http.StatusOK)
		st.started = true
	}
	ev.Elapsed = time.Since(st.begin).Seconds()
	data, _ := json.Marshal(ev)
	st.w.Write(append(data, '\n'))
	if f, ok := st.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (st *stream) progress(vm *store.VM, step, message string) {
	if st.enabled {
		st.send(api.Event{Step: step, Message: message, Name: vm.Name})
	}
}

func (st *stream) finish(s *Server, v *store.VM, err error, okStatus int) {
	if st.note != nil {
		// A streamed answer's status is 200 whatever happens: the audit
		// trail takes the outcome from here.
		st.note.err = err
		if v != nil && st.note.vm == nil {
			st.note.vm = v
		}
	}
	if err == nil {
		s.routeChanged(st, v)
	}
	if !st.started {
		if err != nil {
			s.fail(st.w, err)
			return
		}
		writeJSON(st.w, okStatus, s.toAPI(v))
		return
	}
	if err != nil {
		status, code := classify(err)
		if status >= 500 {
			s.logger().Error("request failed", "err", err)
		}
		st.send(api.Event{Error: &api.Error{Message: err.Error(), Code: code}})
		return
	}
	a := s.toAPI(v)
	st.send(api.Event{VM: &a})
}

// classify maps an error to its HTTP status and code, in one place.
func classify(err error) (int, string) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, vm.ErrQuota):
		return http.StatusForbidden, api.CodeQuota
	case errors.Is(err, vm.ErrOwnerGone):
		return http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, vm.ErrInsufficientStorage):
		return http.StatusInsufficientStorage, api.CodeInsufficientStorage
	case errors.Is(err, vm.ErrInsufficientCapacity):
		return http.StatusConflict, api.CodeInsufficientCapacity
	case errors.Is(err, store.ErrExhausted):
		return http.StatusConflict, api.CodeExhausted
	case errors.Is(err, store.ErrExists), errors.Is(err, vm.ErrBusy), errors.Is(err, vm.ErrBadState), errors.Is(err, deploy.ErrBusy):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, vm.ErrInvalid), errors.Is(err, deploy.ErrInvalid):
		return http.StatusBadRequest, api.CodeBadRequest
	case errors.Is(err, deploy.ErrFailed), errors.Is(err, deploy.ErrNone):
		return http.StatusConflict, api.CodeConflict
	}
	return http.StatusInternalServerError, api.CodeInternal
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	status, code := classify(err)
	if status >= 500 {
		s.logger().Error("request failed", "err", err)
	}
	writeError(w, status, code, err.Error())
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad request body: "+err.Error())
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad request body: data after the JSON object")
		return false
	}
	return true
}

// apiHeaders are every response's defaults: no content sniffing, and a CSP
// under which a response opened as a document can do nothing (guest text
// served as text/plain is never a script or a page). HTML pages replace the
// CSP with their own.
func apiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", apiCSP)
}

// apiCSP is the Content-Security-Policy of every response but the pages'.
const apiCSP = "default-src 'none'; sandbox"

func writeJSON(w http.ResponseWriter, status int, v any) {
	apiHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.Error{Message: msg, Code: code})
}
