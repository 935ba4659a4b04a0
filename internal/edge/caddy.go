// Package edge puts every VM at https://<name>.<domain> through Caddy. It
// computes the routes fcm wants from the store and applies them through Caddy's
// admin API (JSON, each route tagged with an @id), never by editing a
// Caddyfile; it applies them again whenever a VM changes, and whenever Caddy
// has lost them (a restart with an empty config).
package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"time"
)

// Caddy is a client of Caddy's admin API; NewCaddy makes one.
type Caddy struct {
	Admin string // the admin address, e.g. http://127.0.0.1:2019 or unix//run/caddy/admin.sock
	HTTP  *http.Client

	base string // what request paths are appended to
}

// CaddyError is an answer from Caddy other than success.
type CaddyError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *CaddyError) Error() string {
	return fmt.Sprintf("caddy %s %s: %s (HTTP %d)", e.Method, e.Path, e.Message, e.Status)
}

// notThere says the path's parent does not exist (Caddy's "invalid traversal
// path") or the id is unknown.
func notThere(err error) bool {
	var ce *CaddyError
	return errors.As(err, &ce) && (strings.Contains(ce.Message, "invalid traversal path") ||
		strings.Contains(ce.Message, "unknown object ID"))
}

func (c *Caddy) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	base := c.base
	if base == "" {
		base = strings.TrimRight(c.Admin, "/")
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json") // Caddy refuses a body without it
	}
	hc := c.HTTP
	if hc == nil {
		hc = adminClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("caddy admin API at %s: %w", c.Admin, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &CaddyError{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Get reads the config at path (/config/... or /id/...); a missing key is nil.
func (c *Caddy) Get(ctx context.Context, path string) (any, error) {
	var v any
	err := c.do(ctx, http.MethodGet, path, nil, &v)
	if notThere(err) {
		return nil, nil
	}
	return v, err
}

// Set makes the config at path (/config/...) v, creating missing parents.
func (c *Caddy) Set(ctx context.Context, path string, v any) error {
	err := c.do(ctx, http.MethodPost, path, v, nil) // POST sets a key (appends only to arrays)
	if !notThere(err) || path == "/config/" {
		return err
	}
	i := strings.LastIndex(strings.TrimSuffix(path, "/"), "/")
	parent, key := path[:i+1], path[i+1:]
	if parent != "/config/" {
		parent = strings.TrimSuffix(parent, "/")
	}
	return c.Set(ctx, parent, map[string]any{key: v})
}

// Patch replaces the existing object at path.
func (c *Caddy) Patch(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodPatch, path, v, nil)
}

// Put inserts v at path (an array index inserts before it).
func (c *Caddy) Put(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodPut, path, v, nil)
}

// Delete removes the config at path; a missing one is not an error.
func (c *Caddy) Delete(ctx context.Context, path string) error {
	err := c.do(ctx, http.MethodDelete, path, nil, nil)
	if notThere(err) {
		return nil
	}
	return err
}

// same compares a value read from Caddy with one fcm wants, as JSON.
func same(have any, want any) bool {
	b, err := json.Marshal(want)
	if err != nil {
		return false
	}
	var w any
	if json.Unmarshal(b, &w) != nil {
		return false
	}
	return reflect.DeepEqual(have, w)
}

// adminClient talks to a Caddy admin API over TCP. A connection per request:
// Caddy restarts its admin server when a config load touches it, closing idle
// connections, and a POST sent on one that closed fails with EOF (net/http
// retries only idempotent requests).
var adminClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
	Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true,
}}
