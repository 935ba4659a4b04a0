package daemon

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// Checkpointer takes, lists and removes VMs' checkpoints.
type Checkpointer interface {
	CreateCheckpoint(ctx context.Context, name, id, message, by string) (*vm.Checkpoint, error)
	Checkpoints(name, id string) ([]vm.Checkpoint, error)
	RemoveCheckpoint(name, id string, n int) error
	Restore(ctx context.Context, name, id string, n int, by string, progress vm.Progress) (*vm.Restored, error)
	Fork(ctx context.Context, owner vm.Owner, name, id string, from int, newName string, progress vm.Progress) (*store.VM, error)
}

var _ Checkpointer = (*vm.Manager)(nil)

// checkpointsOf is the request's VM and the VMs' Checkpointer; it answers
// the request itself (false) when there is no such VM of the caller's, or
// this daemon cannot take checkpoints.
func (s *Server) checkpointsOf(w http.ResponseWriter, r *http.Request, tok *store.Token) (*store.VM, Checkpointer, bool) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return nil, nil, false
	}
	c, ok := s.VMs.(Checkpointer)
	if !ok {
		s.fail(w, fmt.Errorf("%w: this daemon cannot take checkpoints", vm.ErrInvalid))
		return nil, nil, false
	}
	return found, c, true
}

func checkpointToAPI(c vm.Checkpoint) api.Checkpoint {
	a := api.Checkpoint{ID: c.ID(), Created: c.Created, Message: c.Message, By: c.By, Auto: c.Auto, Bytes: c.Bytes}
	if c.Paused > 0 {
		a.Paused = c.Paused.Round(10 * time.Microsecond).String()
	}
	return a
}

// createCheckpoint is POST /v1/vms/{name}/checkpoints: 201 and the
// checkpoint, with Fcm-Took, fcm's time for it.
func (s *Server) createCheckpoint(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.CreateCheckpointRequest
	if !decode(w, r, &req) {
		return
	}
	if len(req.Message) > api.MaxCheckpointMessage {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("the message is %d bytes: at most %d", len(req.Message), api.MaxCheckpointMessage))
		return
	}
	found, cp, ok := s.checkpointsOf(w, r, tok)
	if !ok {
		return
	}
	t := time.Now()
	c, err := cp.CreateCheckpoint(context.WithoutCancel(r.Context()), found.Name, found.ID, req.Message, whoOf(tok))
	if note := noteOf(r); note != nil && err == nil {
		note.detail = c.ID()
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	// The time the request took, the guest's sync, how long it was paused
	// and fcm's share (all but the sync).
	w.Header().Set("Fcm-Took", time.Since(t).Round(time.Millisecond).String())
	w.Header().Set("Fcm-Guest-Sync", c.Sync.Round(time.Millisecond).String())
	w.Header().Set("Fcm-Paused", c.Paused.Round(time.Microsecond).String())
	w.Header().Set("Fcm-Share", c.Took.Round(time.Microsecond).String())
	writeJSON(w, http.StatusCreated, checkpointToAPI(*c))
}

// listCheckpoints is GET /v1/vms/{name}/checkpoints, oldest first.
func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	found, cp, ok := s.checkpointsOf(w, r, tok)
	if !ok {
		return
	}
	cps, err := cp.Checkpoints(found.Name, found.ID)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := []api.Checkpoint{}
	for _, c := range cps {
		out = append(out, checkpointToAPI(c))
	}
	writeJSON(w, http.StatusOK, out)
}

// removeCheckpoint is DELETE /v1/vms/{name}/checkpoints/{id}.
func (s *Server) removeCheckpoint(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	noteDetail(r, r.PathValue("id"))
	found, cp, ok := s.checkpointsOf(w, r, tok)
	if !ok {
		return
	}
	n, err := vm.ParseCheckpointID(r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	if err := cp.RemoveCheckpoint(found.Name, found.ID, n); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// restoreVM is POST /v1/vms/{name}/restore: the VM back on a checkpoint's
// disk, after an automatic checkpoint of what it replaces; progress is
// streamed as for a start (the automatic checkpoint's id in the
// "checkpoint" step), then the VM.
func (s *Server) restoreVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.RestoreRequest
	if !decode(w, r, &req) {
		return
	}
	n, err := vm.ParseCheckpointID(req.Checkpoint)
	if err != nil {
		s.fail(w, err)
		return
	}
	found, cp, ok := s.checkpointsOf(w, r, tok)
	if !ok {
		return
	}
	st := newStream(w, r)
	if note := noteOf(r); note != nil {
		note.detail = "to v" + strconv.Itoa(n)
	}
	res, err := cp.Restore(context.WithoutCancel(r.Context()), found.Name, found.ID, n, whoOf(tok), st.progress)
	var v *store.VM
	if err == nil {
		v = res.VM
		s.closeConsoles(v, "the VM was restored from a checkpoint")
	}
	st.finish(s, v, err, http.StatusOK)
}

// forkVM is POST /v1/vms/{name}/fork: a new VM of the caller's on a copy of
// the VM's disk or of one of its checkpoints, with its app's releases and
// config vars; progress is streamed as for a create.
func (s *Server) forkVM(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.ForkRequest
	if !decode(w, r, &req) {
		return
	}
	from := 0
	if req.From != "" {
		var err error
		if from, err = vm.ParseCheckpointID(req.From); err != nil {
			s.fail(w, err)
			return
		}
	}
	found, cp, ok := s.checkpointsOf(w, r, tok)
	if !ok {
		return
	}
	ctx := context.WithoutCancel(r.Context())
	st := newStream(w, r)
	if note := noteOf(r); note != nil {
		note.detail = "of " + found.Name
		if from > 0 {
			note.detail += " at v" + strconv.Itoa(from)
		}
	}
	v, err := cp.Fork(ctx, s.ownerOf(tok), found.Name, found.ID, from, req.Name, st.progress)
	if err == nil && s.Deploys != nil {
		var upTo time.Time
		if from > 0 {
			if cps, lerr := cp.Checkpoints(found.Name, found.ID); lerr == nil {
				for _, c := range cps {
					if c.N == from {
						upTo = c.Created
					}
				}
			}
		}
		if cerr := s.Deploys.CopyApp(ctx, found.ID, v.ID, upTo); cerr != nil {
			s.logger().Error("fork: the app's releases and repository", "vm", v.Name, "from", found.Name, "err", cerr)
		}
		if rerr := s.Deploys.EnsureRepo(ctx, v.ID); rerr != nil {
			s.logger().Error("git repository", "vm", v.Name, "err", rerr)
		}
	}
	st.finish(s, v, err, http.StatusCreated)
}

// whoOf names who a token is for the record: its user, or admin.
func whoOf(tok *store.Token) string {
	if tok.User == "" {
		return "admin"
	}
	return tok.User
}
