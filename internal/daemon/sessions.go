package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/console"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
)

// Guests opens SSH connections to VMs (the vm manager).
type Guests interface {
	Client(vm *store.VM) (*guest.Client, error)
}

// guestFor connects to a running VM the caller may see.
func (s *Server) guestFor(w http.ResponseWriter, r *http.Request, tok *store.Token) (*store.VM, *guest.Client, bool) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return nil, nil, false
	}
	if v.State != api.StateRunning {
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("vm %q is %s: start it first (fcm start %s)", v.Name, v.State, v.Name))
		return nil, nil, false
	}
	c, err := s.Guests.Client(v)
	if err != nil {
		s.fail(w, err)
		return nil, nil, false
	}
	return v, c, true
}

// validSessionID answers 400 for an id that may not reach a tmux command line.
func validSessionID(w http.ResponseWriter, id string) bool {
	if err := console.Validate(id); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return false
	}
	return true
}

// sessionIDs lists the ids of a VM's sessions.
func sessionIDs(ctx context.Context, c console.Runner) ([]string, error) {
	sessions, err := console.List(ctx, c)
	var ids []string
	for _, x := range sessions {
		ids = append(ids, x.ID)
	}
	return ids, err
}

// writeNoSession answers 404 naming the sessions the VM does have.
func writeNoSession(w http.ResponseWriter, vm, id string, ids []string) {
	have := "it has none; start one with: fcm console " + vm
	if len(ids) > 0 {
		have = "it has: " + strings.Join(ids, ", ")
	}
	writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("vm %q has no session %q (%s)", vm, id, have))
}

// toAPISessions counts attached clients as users see them: the daemon's own
// tmux client stands for the clients attached through it.
func (s *Server) toAPISessions(v *store.VM, in []console.Session) []api.Session {
	out := []api.Session{}
	for _, x := range in {
		attached := x.Attached
		if clients, hub := s.consoles().Attached(console.Key(v.ID, x.ID)); hub {
			attached = max(0, attached-1) + clients
		}
		out = append(out, api.Session{ID: x.ID, VM: v.Name, Created: x.Created, Attached: attached})
	}
	return out
}

func (s *Server) listVMSessions(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, c, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	defer c.Close()
	sessions, err := console.List(r.Context(), c)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ListSessionsResponse{Sessions: s.toAPISessions(v, sessions)})
}

// listAllSessions lists the caller's sessions in every running VM. The VMs are
// asked at once, each within listTimeout: one that does not answer is left out
// (and logged) and costs the others nothing.
func (s *Server) listAllSessions(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	vms, err := s.Store.ListVMs()
	if err != nil {
		s.fail(w, err)
		return
	}
	var running []*store.VM
	for _, v := range vms {
		if visible(tok, v) && v.State == api.StateRunning {
			running = append(running, v)
		}
	}
	clients := make([]*guest.Client, len(running))
	for i, v := range running {
		if clients[i], err = s.Guests.Client(v); err != nil {
			s.fail(w, err)
			return
		}
	}
	found := make([][]console.Session, len(running))
	var wg sync.WaitGroup
	for i, v := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer clients[i].Close()
			ctx, cancel := context.WithTimeout(r.Context(), listTimeout)
			defer cancel()
			sessions, err := console.List(ctx, clients[i])
			if err != nil {
				s.logger().Warn("list sessions", "vm", v.Name, "err", err)
				return // one unreachable VM does not hide the others
			}
			found[i] = sessions
		}()
	}
	wg.Wait()
	out := api.ListSessionsResponse{Sessions: []api.Session{}}
	for i, v := range running {
		out.Sessions = append(out.Sessions, s.toAPISessions(v, found[i])...)
	}
	writeJSON(w, http.StatusOK, out)
}

// listTimeout bounds asking one VM for its sessions in a listing of all VMs.
const listTimeout = 10 * time.Second

func (s *Server) createSession(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.CreateSessionRequest
	if !decode(w, r, &req) {
		return
	}
	if req.ID != "" && !validSessionID(w, req.ID) {
		return
	}
	v, c, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	defer c.Close()
	ids, err := sessionIDs(r.Context(), c)
	if err != nil {
		s.fail(w, err)
		return
	}
	taken := map[string]bool{}
	for _, x := range ids {
		taken[x] = true
	}
	id := req.ID
	if id == "" {
		id = console.NewID(taken)
	} else if taken[id] {
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("vm %q already has a session %q", v.Name, id))
		return
	}
	if err := console.Create(r.Context(), c, id); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.Session{ID: id, VM: v.Name, Created: time.Now().UTC()})
}

func (s *Server) killSession(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	id := r.PathValue("id")
	if !validSessionID(w, id) {
		return
	}
	v, c, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	defer c.Close()
	err := console.Kill(r.Context(), c, id)
	if errors.Is(err, console.ErrNoSession) {
		ids, _ := sessionIDs(r.Context(), c)
		writeNoSession(w, v.Name, id, ids)
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// attachSession upgrades to a WebSocket bridged to an existing session. The
// token, the VM and the session are all checked before the upgrade, so a bad
// request gets a plain JSON error.
func (s *Server) attachSession(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	id := r.PathValue("id")
	if !validSessionID(w, id) {
		return
	}
	v, c, ok := s.guestFor(w, r, tok)
	if !ok {
		return
	}
	ids, err := sessionIDs(r.Context(), c)
	if err != nil {
		c.Close()
		s.fail(w, err)
		return
	}
	if !slices.Contains(ids, id) {
		c.Close()
		writeNoSession(w, v.Name, id, ids)
		return
	}
	// Same-origin only: a page on another site may not drive a shell. The CLI
	// sends no Origin and is let in.
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		c.Close()
		return // Accept has answered
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	q := r.URL.Query()
	o := console.AttachOptions{Stream: q.Get("stream")}
	o.Cols, _ = strconv.Atoi(q.Get("cols"))
	o.Rows, _ = strconv.Atoi(q.Get("rows"))
	o.Since, _ = strconv.ParseInt(q.Get("since"), 10, 64)
	// The hub keeps this connection to the VM if it is the session's first client.
	kept := false
	dial := func() (console.Conn, error) { kept = true; return c, nil }
	// The WebSocket outlives this request's authentication: it ends, saying
	// why, once the token is revoked or its user removed or denied, or the VM
	// changes hands.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	forget := s.track(tok, v.ID, func(reason string) {
		go func() { ws.Close(websocket.StatusPolicyViolation, reason); cancel() }()
	})
	defer forget()
	err = s.consoles().Attach(ctx, ws, console.Key(v.ID, id), id, dial, o)
	if !kept {
		c.Close()
	}
	if err != nil {
		s.logger().Warn("attach", "vm", v.Name, "session", id, "err", err)
		ws.Close(websocket.StatusInternalError, err.Error())
	}
}

// closeConsoles lets go of the console hubs of a VM that stopped or is gone,
// telling their clients why; a later attach starts afresh.
func (s *Server) closeConsoles(v *store.VM, reason string) {
	s.consoles().CloseVM(v.ID, reason)
}

func (s *Server) consoles() *console.Hubs {
	s.consolesOnce.Do(func() {
		if s.Consoles == nil {
			s.Consoles = &console.Hubs{Grace: 30 * time.Second, Log: s.logger()}
		}
	})
	return s.Consoles
}
