package client

import (
	"net/http"
	"sync"

	"github.com/fcmhost/fcm/internal/dist"
)

// daemonVersion is the version the daemon last told this process, and
// which daemon (Host) told it.
var daemonVersion struct {
	sync.Mutex
	host, version string
}

// noteVersion records the daemon's version from a response (sent only to
// valid tokens: most responses to the CLI).
func (c *Client) noteVersion(resp *http.Response) {
	v := resp.Header.Get(dist.VersionHeader)
	if v == "" {
		return
	}
	daemonVersion.Lock()
	defer daemonVersion.Unlock()
	daemonVersion.host, daemonVersion.version = c.Host, v
}

// DaemonVersion returns the version the last daemon answering this process
// said it runs, and its host; "" when none said (no request yet, or none
// with a valid token).
func DaemonVersion() (host, version string) {
	daemonVersion.Lock()
	defer daemonVersion.Unlock()
	return daemonVersion.host, daemonVersion.version
}
