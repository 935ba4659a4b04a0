package daemon

import (
	"context"
	"fmt"
	"net/http"
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
}

var _ Checkpointer = (*vm.Manager)(nil)

// checkpointer is the VMs' Checkpointer, or an error saying there is none.
func (s *Server) checkpointer() (Checkpointer, error) {
	c, ok := s.VMs.(Checkpointer)
	if !ok {
		return nil, fmt.Errorf("%w: this daemon cannot take checkpoints", vm.ErrInvalid)
	}
	return c, nil
}

func checkpointToAPI(c vm.Checkpoint) api.Checkpoint {
	return api.Checkpoint{ID: c.ID(), Created: c.Created, Message: c.Message, By: c.By, Auto: c.Auto, Bytes: c.Bytes}
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
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	cp, err := s.checkpointer()
	if err != nil {
		s.fail(w, err)
		return
	}
	by := tok.User
	if by == "" {
		by = "admin"
	}
	t := time.Now()
	c, err := cp.CreateCheckpoint(context.WithoutCancel(r.Context()), found.Name, found.ID, req.Message, by)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.Header().Set("Fcm-Took", time.Since(t).Round(time.Millisecond).String())
	writeJSON(w, http.StatusCreated, checkpointToAPI(*c))
}

// listCheckpoints is GET /v1/vms/{name}/checkpoints, oldest first.
func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	cp, err := s.checkpointer()
	if err != nil {
		s.fail(w, err)
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
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	n, err := vm.ParseCheckpointID(r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	cp, err := s.checkpointer()
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
