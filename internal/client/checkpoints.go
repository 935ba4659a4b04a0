package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/fcmhost/fcm/internal/api"
)

// CreateCheckpoint takes a checkpoint of VM vm's disk.
func (c *Client) CreateCheckpoint(ctx context.Context, vm, message string) (*api.Checkpoint, error) {
	var out api.Checkpoint
	err := c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/checkpoints", api.CreateCheckpointRequest{Message: message}, &out)
	return &out, err
}

// Checkpoints lists VM vm's checkpoints, oldest first.
func (c *Client) Checkpoints(ctx context.Context, vm string) ([]api.Checkpoint, error) {
	var out []api.Checkpoint
	err := c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/checkpoints", nil, &out)
	return out, err
}

// RemoveCheckpoint removes checkpoint id (v3) of VM vm's.
func (c *Client) RemoveCheckpoint(ctx context.Context, vm, id string) error {
	return c.call(ctx, "DELETE", "/v1/vms/"+url.PathEscape(vm)+"/checkpoints/"+url.PathEscape(id), nil, nil)
}

// Restore puts VM vm back on its checkpoint id (v3), calling onEvent with
// each progress step (the automatic checkpoint of what it replaced is named
// in the "checkpoint" step).
func (c *Client) Restore(ctx context.Context, vm, id string, onEvent func(api.Event)) (*api.VM, error) {
	return c.streamed(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(vm)+"/restore", api.RestoreRequest{Checkpoint: id}, onEvent)
}

// Fork makes a new VM on a copy of VM vm's disk (or of its checkpoint
// req.From), calling onEvent with each progress step.
func (c *Client) Fork(ctx context.Context, vm string, req api.ForkRequest, onEvent func(api.Event)) (*api.VM, error) {
	return c.streamed(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(vm)+"/fork", req, onEvent)
}
