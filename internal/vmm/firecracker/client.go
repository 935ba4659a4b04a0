package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// apiClient speaks Firecracker's HTTP API over its unix socket.
type apiClient struct {
	socket string
	http   *http.Client
}

func newAPIClient(socket string) *apiClient {
	return &apiClient{socket: socket, http: &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}}
}

// withTimeout is c with requests allowed d each (a Full snapshot writes all
// of guest memory).
func (c *apiClient) withTimeout(d time.Duration) *apiClient {
	h := *c.http
	h.Timeout = d
	return &apiClient{socket: c.socket, http: &h}
}

// APIError is Firecracker's answer to a refused call: the call and its
// fault_message.
type APIError struct {
	Call   string // e.g. "PUT /boot-source"
	Status int
	Fault  string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker %s: %s (HTTP %d)", e.Call, e.Fault, e.Status)
}

// do sends one request; body nil sends none. out, when not nil, receives the
// JSON answer.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	call := method + " " + path
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s: %w", call, err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s: %w", call, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s: %w", call, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &fault) == nil && fault.FaultMessage != "" {
			msg = fault.FaultMessage
		}
		return &APIError{Call: call, Status: resp.StatusCode, Fault: msg}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s: %w", call, err)
		}
	}
	return nil
}

// The request bodies fcm sends, named and shaped as the API spec's definitions.
type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type machineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type vmState struct {
	State string `json:"state"` // Paused or Resumed
}

type snapshotCreate struct {
	SnapshotType string `json:"snapshot_type"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

type memBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type snapshotLoad struct {
	SnapshotPath    string     `json:"snapshot_path"`
	MemBackend      memBackend `json:"mem_backend"`
	TrackDirtyPages bool       `json:"track_dirty_pages"`
	ResumeVM        bool       `json:"resume_vm"`
}

type action struct {
	ActionType string `json:"action_type"`
}

// InstanceInfo is GET /'s answer.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}
