package api

import "time"

// Checkpoints, restore and fork.
//
// A checkpoint is a copy of a VM's disk at one moment, taken live. They are
// routes of their VM: only its owner (and the admin) reaches them, and
// anyone else gets 404 as for a VM that does not exist.
//
// Routes (all JSON; restore and fork stream progress as start and create do):
//
//	POST   /v1/vms/{name}/checkpoints       CreateCheckpointRequest -> 201 Checkpoint
//	GET    /v1/vms/{name}/checkpoints       -> []Checkpoint, oldest first
//	DELETE /v1/vms/{name}/checkpoints/{id}  -> 204
//	POST   /v1/vms/{name}/restore           RestoreRequest -> VM
//	POST   /v1/vms/{name}/fork              ForkRequest -> 201 VM (the fork)

// Checkpoint is one of a VM's checkpoints: a copy of its disk as it was.
type Checkpoint struct {
	ID      string    `json:"id"` // v1, v2, ...: numbered per VM, never reused
	Created time.Time `json:"created"`
	Message string    `json:"message,omitempty"`
	By      string    `json:"by,omitempty"`   // who took it: a user, or admin
	Auto    string    `json:"auto,omitempty"` // why fcm took it by itself
	// Bytes is what it holds that nothing else shares: what removing it
	// gives back to the host.
	Bytes int64 `json:"bytes"`
	// Paused is how long the VM was paused for it, in the answer to its
	// create ("" when it was not running).
	Paused string `json:"paused,omitempty"`
}

// CreateCheckpointRequest is POST /v1/vms/{name}/checkpoints.
type CreateCheckpointRequest struct {
	Message string `json:"message,omitempty"`
}

// MaxCheckpointMessage bounds a checkpoint's message, in bytes.
const MaxCheckpointMessage = 500

// RestoreRequest is POST /v1/vms/{name}/restore: the checkpoint to put the
// VM back on.
type RestoreRequest struct {
	Checkpoint string `json:"checkpoint"` // v3
}

// ForkRequest is POST /v1/vms/{name}/fork.
type ForkRequest struct {
	From string `json:"from,omitempty"` // a checkpoint (v3); "": the VM's current disk
	Name string `json:"name,omitempty"` // the fork's name; "": a generated one
}
