package client

import (
	"context"
	"net/http"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
)

// ListKeys lists the SSH keys the token has added.
func (c *Client) ListKeys(ctx context.Context) ([]api.Key, error) {
	var out api.ListKeysResponse
	return out.Keys, c.call(ctx, http.MethodGet, "/v1/keys", nil, &out)
}

// AddKey adds an SSH public key (an authorized_keys line) for git over SSH.
func (c *Client) AddKey(ctx context.Context, publicKey string) (*api.Key, error) {
	var k api.Key
	return &k, c.call(ctx, http.MethodPost, "/v1/keys", api.AddKeyRequest{PublicKey: publicKey}, &k)
}

// RemoveKey removes the key with this fingerprint (SHA256:..., the prefix optional).
func (c *Client) RemoveKey(ctx context.Context, fingerprint string) error {
	// base64url in the path: a '/' of the fingerprint would split the segment.
	fp := strings.NewReplacer("+", "-", "/", "_").Replace(strings.TrimPrefix(fingerprint, "SHA256:"))
	return c.call(ctx, http.MethodDelete, "/v1/keys/SHA256:"+fp, nil, nil)
}
