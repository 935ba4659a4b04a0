package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

var (
	bucketReleases = []byte("releases") // "<vm>/<version, 8 digits>" -> Release
	bucketConfig   = []byte("config")   // vm -> config vars (JSON object)
)

// Release statuses.
const (
	ReleasePending   = "pending" // being built or switched to
	ReleaseSucceeded = "succeeded"
	ReleaseFailed    = "failed"
)

// Release is one version of an app: a deploy, a config change or a rollback.
type Release struct {
	VM          string            `json:"vm"`
	Version     int               `json:"version"`
	Description string            `json:"description"` // "Deploy 3f2a1c0", "Set FOO config vars", "Rollback to v3"
	Commit      string            `json:"commit,omitempty"`
	Build       int               `json:"build"` // the build it runs (its own version for a deploy)
	Env         map[string]string `json:"env,omitempty"`
	User        string            `json:"user"`
	Status      string            `json:"status"`
	Reason      string            `json:"reason,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	FinishedAt  time.Time         `json:"finished_at,omitzero"`
}

func releaseKey(vm string, version int) []byte { return fmt.Appendf(nil, "%s/%08d", vm, version) }

// PutRelease writes a release.
func (t *Tx) PutRelease(r *Release) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketReleases).Put(releaseKey(r.VM, r.Version), data)
}

// Releases lists a VM's releases, oldest first.
func (t *Tx) Releases(vm string) ([]*Release, error) {
	var out []*Release
	prefix := []byte(vm + "/")
	c := t.tx.Bucket(bucketReleases).Cursor()
	for k, v := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = c.Next() {
		var r Release
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("release %s: %w", k, err)
		}
		out = append(out, &r)
	}
	return out, nil
}

// GetRelease returns one release of a VM.
func (t *Tx) GetRelease(vm string, version int) (*Release, error) {
	data := t.tx.Bucket(bucketReleases).Get(releaseKey(vm, version))
	if data == nil {
		return nil, fmt.Errorf("%s has no release v%d: %w", vm, version, ErrNotFound)
	}
	var r Release
	return &r, json.Unmarshal(data, &r)
}

// AllReleases calls fn for every release of every VM.
func (t *Tx) AllReleases(fn func(*Release) error) error {
	return t.tx.Bucket(bucketReleases).ForEach(func(k, v []byte) error {
		var r Release
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("release %s: %w", k, err)
		}
		return fn(&r)
	})
}

// Config returns a VM's config vars (empty, not nil, when it has none).
func (t *Tx) Config(vm string) (map[string]string, error) {
	out := map[string]string{}
	data := t.tx.Bucket(bucketConfig).Get([]byte(vm))
	if data == nil {
		return out, nil
	}
	return out, json.Unmarshal(data, &out)
}

// PutConfig replaces a VM's config vars.
func (t *Tx) PutConfig(vm string, vars map[string]string) error {
	data, err := json.Marshal(vars)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketConfig).Put([]byte(vm), data)
}

// DeleteApp removes a VM's releases and config vars.
func (t *Tx) DeleteApp(vm string) error {
	if err := t.tx.Bucket(bucketConfig).Delete([]byte(vm)); err != nil {
		return err
	}
	b := t.tx.Bucket(bucketReleases)
	prefix := []byte(vm + "/")
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
