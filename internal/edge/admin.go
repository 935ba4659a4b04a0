package edge

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// DefaultAdminSocket is where the quick start puts Caddy's admin API: a unix
// socket only root (and Caddy's own user) may open, so no local user can
// rewrite the routes and collect the tokens sent to fcm.<domain>.
const DefaultAdminSocket = "/run/caddy/admin.sock"

// DefaultAdminTCP is Caddy's own default admin address.
const DefaultAdminTCP = "http://127.0.0.1:2019"

// DefaultAdmin is the admin address the daemon uses when none is given: the
// quick start's socket when it exists, else Caddy's default on loopback TCP.
func DefaultAdmin() string {
	if fi, err := os.Stat(DefaultAdminSocket); err == nil && fi.Mode().Type() == os.ModeSocket {
		return "unix/" + DefaultAdminSocket
	}
	return DefaultAdminTCP
}

// adminSocket returns the socket path of a Caddy admin address in Caddy's
// own syntax, unix/<path> (so unix//run/caddy/admin.sock for an absolute
// path), with the optional |<mode> Caddy takes for the socket's permissions
// dropped. ok is false for other addresses.
func adminSocket(admin string) (path string, ok bool) {
	rest, ok := strings.CutPrefix(admin, "unix/")
	if !ok {
		return "", false
	}
	path, _, _ = strings.Cut(rest, "|")
	return path, true
}

// validateAdmin accepts http(s)://host:port or unix//absolute/path.sock.
func validateAdmin(admin string) error {
	if path, ok := adminSocket(admin); ok {
		if !strings.HasPrefix(path, "/") || len(path) > 107 || strings.ContainsAny(path, "\x00\n") {
			return fmt.Errorf("invalid Caddy admin socket %q: want unix/ and an absolute path of at most 107 bytes, like unix/%s", admin, DefaultAdminSocket)
		}
		return nil
	}
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("invalid Caddy admin address %q: want a URL like %s or a socket like unix/%s", admin, DefaultAdminTCP, DefaultAdminSocket)
	}
	return nil
}

// NewCaddy returns a client of the admin API at admin: a URL, or a unix
// socket in Caddy's syntax (unix//run/caddy/admin.sock).
//
// Over a socket, requests name the host 127.0.0.1: Caddy checks the Host
// header of its admin requests against DNS rebinding, and for a socket it
// accepts only an empty host (which Go's client cannot send), 127.0.0.1 or ::1.
func NewCaddy(admin string) *Caddy {
	c := &Caddy{Admin: admin, base: strings.TrimRight(admin, "/")}
	path, ok := adminSocket(admin)
	if !ok {
		return c
	}
	c.base = "http://127.0.0.1"
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	c.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true, // see adminClient
	}}
	return c
}
