package client

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
)

// ListKeys lists the SSH keys the token has added.
func (c *Client) ListKeys(ctx context.Context) ([]api.Key, error) {
	var out api.ListKeysResponse
	return out.Keys, c.call(ctx, http.MethodGet, "/v1/keys", nil, &out)
}

// KeyChallenge asks for a one-time challenge to sign with a key before
// adding it (AddKey).
func (c *Client) KeyChallenge(ctx context.Context) (*api.KeyChallenge, error) {
	var out api.KeyChallenge
	return &out, c.call(ctx, http.MethodPost, "/v1/keys/challenge", nil, &out)
}

// KeyNamespace is the SSHSIG namespace a key's proof is made in for this
// daemon: api.KeyNamespacePrefix and the host name of c.Host. The CLI signs
// only in it, so a daemon cannot pass on another host's challenge.
func (c *Client) KeyNamespace() string {
	host := ""
	if u, err := url.Parse(c.Host); err == nil {
		host = strings.ToLower(u.Hostname())
	}
	if host == "" {
		host = "localhost"
	}
	return api.KeyNamespacePrefix + host
}

// AddKey adds an SSH public key (an authorized_keys line) for git over SSH,
// with its proof: a signature of a KeyChallenge by the key.
func (c *Client) AddKey(ctx context.Context, req api.AddKeyRequest) (*api.Key, error) {
	var k api.Key
	return &k, c.call(ctx, http.MethodPost, "/v1/keys", req, &k)
}

// RemoveKey removes the key with this fingerprint (SHA256:..., the prefix optional).
func (c *Client) RemoveKey(ctx context.Context, fingerprint string) error {
	// base64url in the path: a '/' of the fingerprint would split the segment.
	fp := strings.NewReplacer("+", "-", "/", "_").Replace(strings.TrimPrefix(fingerprint, "SHA256:"))
	return c.call(ctx, http.MethodDelete, "/v1/keys/SHA256:"+fp, nil, nil)
}
