package client

import (
	"context"
	"net/http"

	"github.com/fcmhost/fcm/internal/api"
)

// ListImages lists the stored guest images (bases), newest build first, with
// the VMs made from each (admin only).
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var out api.ListImagesResponse
	return out.Images, c.call(ctx, http.MethodGet, "/v1/images", nil, &out)
}

// PruneImages removes the bases that are neither current nor used by a VM,
// and says which it removed and how many it kept (admin only).
func (c *Client) PruneImages(ctx context.Context) (*api.PruneImagesResponse, error) {
	var out api.PruneImagesResponse
	return &out, c.call(ctx, http.MethodPost, "/v1/images/prune", nil, &out)
}
