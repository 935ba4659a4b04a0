package client

import (
	"context"
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
