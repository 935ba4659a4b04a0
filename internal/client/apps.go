package client

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"

	"github.com/fcmhost/fcm/internal/api"
)

// Releases lists an app's releases, newest first.
func (c *Client) Releases(ctx context.Context, vm string) ([]api.Release, error) {
	var out api.ListReleasesResponse
	err := c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/releases", nil, &out)
	return out.Releases, err
}

// ReleaseOutput returns what a release printed: its build, release command, switch.
func (c *Client) ReleaseOutput(ctx context.Context, vm string, version int) ([]byte, error) {
	resp, err := c.do(ctx, "GET", fmt.Sprintf("/v1/vms/%s/releases/v%d/output", url.PathEscape(vm), version), nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// Rollback makes a release that runs version (0: the one before the current).
func (c *Client) Rollback(ctx context.Context, vm string, version int) (*api.Release, error) {
	var out api.Release
	err := c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/rollback", api.RollbackRequest{Version: version}, &out)
	return &out, err
}

// Config returns an app's config vars.
func (c *Client) Config(ctx context.Context, vm string) (map[string]string, error) {
	var out api.Config
	err := c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/config", nil, &out)
	return out.Vars, err
}

// ChangeConfig sets and unsets config vars, restarting the app into a new release.
func (c *Client) ChangeConfig(ctx context.Context, vm string, change api.ConfigChange) (*api.Config, error) {
	var out api.Config
	err := c.call(ctx, "PATCH", "/v1/vms/"+url.PathEscape(vm)+"/config", change, &out)
	return &out, err
}

// Processes lists an app's processes.
func (c *Client) Processes(ctx context.Context, vm string) ([]api.Process, error) {
	var out api.ListProcessesResponse
	err := c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/ps", nil, &out)
	return out.Processes, err
}

// Restart restarts an app's processes (a new set beside the old, then a switch).
func (c *Client) Restart(ctx context.Context, vm string) ([]api.Process, error) {
	var out api.ListProcessesResponse
	err := c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/restart", nil, &out)
	return out.Processes, err
}

// Logs copies an app's last lines (and with follow, new ones until ctx ends) to w.
func (c *Client) Logs(ctx context.Context, vm string, lines int, follow bool, w io.Writer) error {
	q := url.Values{"lines": {strconv.Itoa(lines)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/logs?"+q.Encode(), nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Run runs a one-off command in the app's current release, copies its output
// to w as it comes, and returns its exit status.
func (c *Client) Run(ctx context.Context, vm string, argv []string, w io.Writer) (int, error) {
	resp, err := c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/run", api.RunRequest{Command: argv}, "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return 0, err
	}
	code, err := strconv.Atoi(resp.Trailer.Get("Fcm-Exit"))
	if err != nil {
		return 0, fmt.Errorf("the daemon did not say how the command ended")
	}
	return code, nil
}
