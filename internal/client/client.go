// Package client is the Go client of fcm's HTTP API, used by the CLI and tests.
// It never imports the daemon; API errors come back as *api.Error.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// DefaultHost is where the daemon listens unless FCM_HOST says otherwise.
const DefaultHost = "http://127.0.0.1:7777"

// Client talks to one daemon with one token.
type Client struct {
	Host  string
	Token string
	HTTP  *http.Client
	// Err, when set, is returned by every request before anything is sent
	// (FromEnv's refusal of a token file others can read).
	Err error
	// Warn, when set, receives a warning before the token first goes over
	// plain http:// to another host.
	Warn io.Writer
	// TokenFile is the file the token was read from; "" when it came from
	// FCM_TOKEN or the caller.
	TokenFile string
	// HostFile is the file Host was read from (~/.fcm-host); "" when it came
	// from FCM_HOST, the default or the caller.
	HostFile string

	warnOnce sync.Once
}

// FromEnv builds a client from the environment: the host from FCM_HOST, else
// ~/.fcm-host (written by fcm login), else DefaultHost; the token from
// FCM_TOKEN, else ~/.fcm-token. A token or host file that others may read is
// refused (Err), and a warning goes to stderr before the token is sent in
// clear to another host.
func FromEnv() *Client {
	c := &Client{HTTP: &http.Client{}, Warn: os.Stderr}
	c.Host, c.HostFile, c.Err = HostFromEnv()
	c.Token = strings.TrimSpace(os.Getenv("FCM_TOKEN"))
	if c.Token == "" {
		if home, err := os.UserHomeDir(); err == nil {
			path := filepath.Join(home, TokenFileName)
			var err error
			c.Token, err = ReadTokenFile(path)
			if c.Err == nil {
				c.Err = err
			}
			if c.Token != "" {
				c.TokenFile = path
			}
		}
	}
	return c
}

// HostFromEnv returns the daemon's URL as FromEnv finds it (FCM_HOST, else
// ~/.fcm-host, else DefaultHost) without a trailing slash, and the file it
// came from ("" when it did not come from ~/.fcm-host).
func HostFromEnv() (host, file string, err error) {
	host = os.Getenv("FCM_HOST")
	if host == "" {
		if home, herr := os.UserHomeDir(); herr == nil {
			path := filepath.Join(home, HostFileName)
			host, err = ReadTokenFile(path)
			if host != "" {
				file = path
			}
		}
	}
	if host == "" {
		host = DefaultHost
	}
	return strings.TrimRight(host, "/"), file, err
}

// TokenFileName is the CLI's token file, in the user's home directory.
const TokenFileName = ".fcm-token"

// HostFileName is the CLI's file of the daemon's URL, beside the token file
// (fcm login writes both; the same mode rules apply).
const HostFileName = ".fcm-host"

// ReadTokenFile reads a token file (or the host file beside it): "" when
// there is none, an error when group or others may read it (the token is
// root on every VM).
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		shown := path
		if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(path, home+"/") {
			shown = "~" + strings.TrimPrefix(path, home)
		}
		return "", fmt.Errorf("%s has mode %#o: run chmod 600 %s", shown, perm, shown)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	return strings.TrimSpace(string(b)), err
}

// WriteTokenFile replaces path with token, mode 0600, through a temporary
// file and a rename (never readable by others, never half-written).
func WriteTokenFile(path, token string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*") // 0600
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(token + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// PlainRemote reports whether host (a URL) is http:// to somewhere other than
// this machine: a token sent there crosses the network in clear.
func PlainRemote(host string) (string, bool) {
	u, err := url.Parse(host)
	if err != nil || u.Scheme != "http" {
		return "", false
	}
	h := u.Hostname()
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return h, false
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return h, false
	}
	return h, true
}

// ErrNoToken is returned before any request when no token is configured.
var ErrNoToken = errors.New("no API token: run fcm login, set FCM_TOKEN, or put the admin token in ~/.fcm-token (the daemon writes it to /var/lib/firecracker/.token)")

// UnreachableError says the daemon could not be reached at all.
type UnreachableError struct {
	Host string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the fcm daemon at %s: %v (is 'sudo fcm daemon' running? FCM_HOST picks another)", e.Host, rootCause(e.Err))
}

func (e *UnreachableError) Unwrap() error { return e.Err }

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// IsNotFound reports whether err is the API's 404.
func IsNotFound(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeNotFound
}

func (c *Client) do(ctx context.Context, method, path string, body any, accept string) (*http.Response, error) {
	if c.Err != nil {
		return nil, c.Err
	}
	// A login's requests carry no token: they are how a person gets one.
	login := strings.HasPrefix(path, "/v1/logins")
	token := c.Token
	if login {
		token = ""
	}
	if token == "" && !login && path != "/health" {
		return nil, ErrNoToken
	}
	if token != "" && c.Warn != nil {
		if h, remote := PlainRemote(c.Host); remote {
			c.warnOnce.Do(func() {
				fmt.Fprintf(c.Warn, "fcm: warning: sending your token in clear over http:// to %s; anyone on the way can read it (use https://, e.g. https://fcm.<domain> through Caddy)\n", h)
			})
		}
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Host+path, rd)
	if err != nil {
		return nil, fmt.Errorf("FCM_HOST %q: %w", c.Host, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &UnreachableError{Host: c.Host, Err: err}
	}
	c.noteVersion(resp)
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ae api.Error
	if json.Unmarshal(data, &ae) == nil && ae.Message != "" {
		return &ae
	}
	return &api.Error{Message: fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data))), Code: api.CodeInternal}
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Health asks the daemon whether it is up (no token needed).
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	var h api.Health
	return &h, c.call(ctx, http.MethodGet, "/health", nil, &h)
}

// ListVMs lists the VMs the token may see.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var out api.ListVMsResponse
	return out.VMs, c.call(ctx, http.MethodGet, "/v1/vms", nil, &out)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name), nil, &v)
}

// CreateVM creates a VM, calling onEvent with each progress step.
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest, onEvent func(api.Event)) (*api.VM, error) {
	return c.streamed(ctx, http.MethodPost, "/v1/vms", req, onEvent)
}

// StartVM boots a stopped VM, calling onEvent with each progress step.
func (c *Client) StartVM(ctx context.Context, name string, onEvent func(api.Event)) (*api.VM, error) {
	return c.streamed(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/start", nil, onEvent)
}

// StopVM powers a VM off.
func (c *Client) StopVM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/stop", nil, &v)
}

// SuspendVM writes a running VM to disk and ends its hypervisor.
func (c *Client) SuspendVM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/suspend", nil, &v)
}

// UpdateVM changes a VM's settings (the fields req gives).
func (c *Client) UpdateVM(ctx context.Context, name string, req api.UpdateVMRequest) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, http.MethodPatch, "/v1/vms/"+url.PathEscape(name), req, &v)
}

// ResumeVM wakes a suspended VM where it was.
func (c *Client) ResumeVM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/resume", nil, &v)
}

// DestroyVM removes a VM and everything it had.
func (c *Client) DestroyVM(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(name), nil, nil)
}

// streamed reads a progress stream (or a plain JSON answer) to its final VM.
// A stream cut short (a proxy reloading, a dropped connection) is not the
// operation's end: the daemon carries on, so the client follows the VM until
// it settles.
func (c *Client) streamed(ctx context.Context, method, path string, body any, onEvent func(api.Event)) (*api.VM, error) {
	resp, err := c.do(ctx, method, path, body, "application/x-ndjson")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		var v api.VM
		return &v, json.NewDecoder(resp.Body).Decode(&v)
	}
	name, elapsed := "", 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("bad progress line %q: %w", sc.Text(), err)
		}
		if ev.Name != "" {
			name = ev.Name
		}
		elapsed = max(elapsed, ev.Elapsed)
		switch {
		case ev.Error != nil:
			return nil, ev.Error
		case ev.VM != nil:
			return ev.VM, nil
		case onEvent != nil:
			onEvent(ev)
		}
	}
	cut := sc.Err()
	if cut == nil {
		cut = errors.New("the stream ended early")
	}
	if name == "" {
		return nil, &UnreachableError{Host: c.Host, Err: fmt.Errorf("%w before the operation finished (see 'fcm ls')", cut)}
	}
	if onEvent != nil {
		onEvent(api.Event{Step: "wait", Message: "connection cut (" + cut.Error() + "); following " + name + " until it settles",
			Name: name, Elapsed: elapsed})
	}
	return c.follow(ctx, name)
}

// follow polls a VM until it leaves the transitional states. A VM that is
// gone was a create that failed and was undone.
func (c *Client) follow(ctx context.Context, name string) (*api.VM, error) {
	var unreachableSince, settled time.Time
	for {
		v, err := c.GetVM(ctx, name)
		switch {
		case IsNotFound(err):
			return nil, &api.Error{Message: fmt.Sprintf("%s is gone: the operation failed and was undone (the daemon's log says why)", name), Code: api.CodeInternal}
		case err != nil:
			var ue *UnreachableError
			if !errors.As(err, &ue) {
				return nil, err
			}
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
			} else if time.Since(unreachableSince) > 5*time.Second {
				return nil, err
			}
		case v.State != api.StateCreating && v.State != api.StateStarting:
			// The operation's last step is the route: give it a moment.
			if v.Route != "pending" || !settled.IsZero() && time.Since(settled) > 5*time.Second {
				return v, nil
			}
			if settled.IsZero() {
				settled = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ListSessions lists console sessions: of one VM, or of every VM when vm is "".
func (c *Client) ListSessions(ctx context.Context, vm string) ([]api.Session, error) {
	path := "/v1/sessions"
	if vm != "" {
		path = "/v1/vms/" + url.PathEscape(vm) + "/sessions"
	}
	var out api.ListSessionsResponse
	return out.Sessions, c.call(ctx, http.MethodGet, path, nil, &out)
}

// CreateSession starts a session in vm; id "" takes the next free name.
func (c *Client) CreateSession(ctx context.Context, vm, id string) (*api.Session, error) {
	var s api.Session
	return &s, c.call(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(vm)+"/sessions", api.CreateSessionRequest{ID: id}, &s)
}

// KillSession ends a session and what runs in it.
func (c *Client) KillSession(ctx context.Context, vm, id string) error {
	return c.call(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(vm)+"/sessions/"+url.PathEscape(id), nil, nil)
}

// RotateAdminToken makes the daemon replace its admin token (this client's
// must be it) with a new one, which it returns; the old one stops working.
func (c *Client) RotateAdminToken(ctx context.Context) (*api.RotateTokenResponse, error) {
	var out api.RotateTokenResponse
	return &out, c.call(ctx, http.MethodPost, "/v1/tokens/admin/rotate", nil, &out)
}

// Stats reads what VM name uses now, and its last hour.
func (c *Client) Stats(ctx context.Context, name string) (*api.VMStats, error) {
	var st api.VMStats
	return &st, c.call(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name)+"/stats", nil, &st)
}

// Events reads the audit trail: of VM vm ("" for all the caller may read),
// in the last since (0: all), after event seq after.
func (c *Client) Events(ctx context.Context, vm string, since time.Duration, after uint64) ([]api.AuditEvent, error) {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	if since > 0 {
		q.Set("since", since.String())
	}
	if after > 0 {
		q.Set("after", strconv.FormatUint(after, 10))
	}
	var out []api.AuditEvent
	return out, c.call(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &out)
}
