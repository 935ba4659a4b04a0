// Package api holds the wire types of fcm's HTTP API, shared by the daemon and its
// Go client. It imports nothing of fcm's own.
package api

import "time"

// VM states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateStarting = "starting"
	StateError    = "error"
	// StateRestarting: its hypervisor died (or its guest rebooted); the
	// daemon boots it again after a backoff. Reason says why.
	StateRestarting = "restarting"
	// StateCrashed: it died too often (5 times in 10 minutes); it stays down
	// until its owner starts it. Reason says why.
	StateCrashed = "crashed"
	// StatePaused: its hypervisor runs but the guest is paused (the host's
	// disk is full); the daemon resumes it when space is back.
	StatePaused = "paused"
	// StateSuspending, StateSuspended, StateWaking: its memory and device
	// state are being written to disk, are on disk (no hypervisor runs), are
	// being restored.
	StateSuspending = "suspending"
	StateSuspended  = "suspended"
	StateWaking     = "waking"
)

// Desired states: what a VM's owner last asked for (Desired).
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// VM is one microVM as the API shows it.
type VM struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"` // why it is in this state (error, restarting, crashed, paused, starting after a restart)
	// Desired is what its owner last asked for: running or stopped. The
	// daemon converges State to it (restarting a VM that died).
	Desired string `json:"desired,omitempty"`
	// SuspendedAt is when it was suspended (state suspended).
	SuspendedAt *time.Time `json:"suspended_at,omitempty"`
	// SuspendAfter is how long it may sit idle before the daemon suspends
	// it, as FormatSuspendAfter writes it; "" when it never sleeps by itself.
	SuspendAfter string `json:"suspend_after,omitempty"`
	// Events are the last things that happened to it by themselves (deaths,
	// restarts, give-ups, a guest's poweroff, pauses), oldest first.
	Events     []VMEvent `json:"events,omitempty"`
	IP         string    `json:"ip"`
	MAC        string    `json:"mac"`
	CPUs       int       `json:"cpus"`
	MemoryMiB  int       `json:"memory_mib"`
	DiskBytes  int64     `json:"disk_bytes"`
	Port       int       `json:"port"`
	URL        string    `json:"url,omitempty"`
	Route      string    `json:"route,omitempty"`   // the URL's route in Caddy: applied or pending
	Domains    []string  `json:"domains,omitempty"` // custom domains it is also served at
	Hypervisor string    `json:"hypervisor"`
	Owner      string    `json:"owner,omitempty"` // the owner's email ("admin" for the admin token); told to the admin only
	PID        int       `json:"pid,omitempty"`
	HostKey    string    `json:"host_key"` // the VM's SSH host key, authorized_keys format
	CreatedAt  time.Time `json:"created_at"`
}

// VMEvent is one thing that happened to a VM without its owner asking: its
// hypervisor died, it was restarted, the daemon gave up on it, its guest
// powered itself off, it was paused or resumed.
type VMEvent struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // died, restarted, crashed, poweroff, reboot, paused, resumed, host-restart
	Detail string    `json:"detail,omitempty"`
}

// CreateVMRequest is the body of POST /v1/vms. Zero fields take the defaults.
type CreateVMRequest struct {
	Name      string `json:"name,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskBytes int64  `json:"disk_bytes,omitempty"`
	Port      int    `json:"port,omitempty"`
	NoExpose  bool   `json:"no_expose,omitempty"` // no public URL through the edge
	// SuspendAfter: how long it may sit idle before it is suspended ("5m",
	// "off"); "" takes the daemon's default (off for a VM with NoExpose).
	SuspendAfter string `json:"suspend_after,omitempty"`
}

// UpdateVMRequest is the body of PATCH /v1/vms/{name}: the fields given are
// changed, the others kept.
type UpdateVMRequest struct {
	SuspendAfter *string `json:"suspend_after,omitempty"`
}

// Defaults and limits of a VM.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 1024
	DefaultDiskBytes = 2 << 30
	DefaultPort      = 3000
	DefaultSwapMiB   = 512
	MaxCPUs          = 32
	MinMemoryMiB     = 256
	MaxMemoryMiB     = 256 << 10
	MaxDiskBytes     = 1 << 40
)

// ListVMsResponse is the body of GET /v1/vms.
type ListVMsResponse struct {
	VMs []VM `json:"vms"`
}

// Event is one line of progress streamed while a long request runs (create,
// start): the response is newline-delimited JSON events, the last of which has
// VM (success) or Error set.
type Event struct {
	Step    string  `json:"step,omitempty"` // reserve, disk, network, boot, ssh, route
	Name    string  `json:"name,omitempty"` // the VM's name (known from the first step on)
	Message string  `json:"message,omitempty"`
	Elapsed float64 `json:"elapsed,omitempty"` // seconds since the request began
	VM      *VM     `json:"vm,omitempty"`
	Error   *Error  `json:"error,omitempty"`
}

// Error is the body of every failed request.
type Error struct {
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *Error) Error() string { return e.Message }

// Error codes: stable strings clients can branch on.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeExhausted    = "pool_exhausted"
	CodeInternal     = "internal"
	CodeUnavailable  = "unavailable"
	// The host has not the disk space (HTTP 507) or the memory (409) for it.
	CodeInsufficientStorage  = "insufficient_storage"
	CodeInsufficientCapacity = "insufficient_capacity"
)

// Health is the body of GET /health. Version and hypervisor are told only to
// clients on the host itself or with a valid token: through the edge, anyone
// else learns only that the daemon is up.
type Health struct {
	Status     string `json:"status"`
	Version    string `json:"version,omitempty"`
	Hypervisor string `json:"hypervisor,omitempty"`
}

// RotateTokenResponse is the body of POST /v1/tokens/admin/rotate: the new
// admin token (the old one is refused from then on) and the daemon's file of it.
type RotateTokenResponse struct {
	Token       string `json:"token"`
	Fingerprint string `json:"fingerprint"` // how the daemon's log names it
	File        string `json:"file"`
}

// Session is a persistent console session: a tmux session in a VM.
type Session struct {
	ID       string    `json:"id"`
	VM       string    `json:"vm"`
	Created  time.Time `json:"created"`
	Attached int       `json:"attached"`
}

// ListSessionsResponse is the body of GET /v1/sessions and GET /v1/vms/{name}/sessions.
type ListSessionsResponse struct {
	Sessions []Session `json:"sessions"`
}

// CreateSessionRequest is the optional body of POST /v1/vms/{name}/sessions.
type CreateSessionRequest struct {
	ID string `json:"id,omitempty"` // default: the next free nature word
}

// Release is one version of an app: a deploy, a config change or a rollback.
type Release struct {
	Version     int       `json:"version"`
	Description string    `json:"description"`
	Commit      string    `json:"commit,omitempty"`
	User        string    `json:"user"`
	Status      string    `json:"status"` // pending, succeeded, failed
	Reason      string    `json:"reason,omitempty"`
	Current     bool      `json:"current,omitempty"` // the release that runs
	CreatedAt   time.Time `json:"created_at"`
}

// ListReleasesResponse is the body of GET /v1/vms/{name}/releases, newest first.
type ListReleasesResponse struct {
	Releases []Release `json:"releases"`
}

// RollbackRequest is the body of POST /v1/vms/{name}/rollback; version 0 means
// the release before the current one.
type RollbackRequest struct {
	Version int `json:"version,omitempty"`
}

// Config is an app's config vars (GET /v1/vms/{name}/config), and after a
// change (PATCH) the release the change made, if the app had one to restart.
type Config struct {
	Vars    map[string]string `json:"vars"`
	Release *Release          `json:"release,omitempty"`
}

// ConfigChange is the body of PATCH /v1/vms/{name}/config.
type ConfigChange struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// Process is one of an app's running processes (GET /v1/vms/{name}/ps).
type Process struct {
	Type     string    `json:"type"`
	Command  string    `json:"command"`
	Release  int       `json:"release"`
	State    string    `json:"state"`
	PID      int       `json:"pid,omitempty"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	LastExit string    `json:"last_exit,omitempty"`
}

// ListProcessesResponse is the body of GET /v1/vms/{name}/ps.
type ListProcessesResponse struct {
	Processes []Process `json:"processes"`
}

// RunRequest is the body of POST /v1/vms/{name}/run: a one-off command in the
// current release's directory and environment. The response streams its
// output; the trailer Fcm-Exit carries its exit status.
type RunRequest struct {
	Command []string `json:"command"`
}

// Key is an SSH public key that may push over git's SSH transport
// (ssh://git@<host>/<app>.git) on behalf of the token that added it.
type Key struct {
	Fingerprint string    `json:"fingerprint"` // SHA256:..., as ssh-keygen -l prints it
	Type        string    `json:"type"`        // ssh-ed25519, ssh-rsa, ...
	Comment     string    `json:"comment"`
	PublicKey   string    `json:"public_key"` // the authorized_keys line
	AddedAt     time.Time `json:"added_at"`
}

// AddKeyRequest is the body of POST /v1/keys: the key, and the proof that
// the caller holds its private half (a signature over a one-time challenge).
type AddKeyRequest struct {
	PublicKey string `json:"public_key"` // an authorized_keys line: "ssh-ed25519 AAAA... you@host"
	Challenge string `json:"challenge"`  // from POST /v1/keys/challenge, used once
	// Signature is `ssh-keygen -Y sign -n <namespace>` of the challenge by
	// the key: the armored SSHSIG ("-----BEGIN SSH SIGNATURE-----...").
	Signature string `json:"signature"`
}

// KeyNamespacePrefix begins the SSHSIG namespace of a key's proof, followed
// by the daemon's host name as the client addresses it ("fcm-keys-add@host"):
// a signature made for one host does not add the key on another.
const KeyNamespacePrefix = "fcm-keys-add@"

// KeyChallenge is the body of POST /v1/keys/challenge: what to sign to add a
// key, valid once, for the token that asked, until ExpiresAt.
type KeyChallenge struct {
	Challenge string    `json:"challenge"` // random, base64url; the message signed
	Namespace string    `json:"namespace"` // KeyNamespacePrefix + host
	ExpiresAt time.Time `json:"expires_at"`
}

// ListKeysResponse is the body of GET /v1/keys.
type ListKeysResponse struct {
	Keys []Key `json:"keys"`
}
