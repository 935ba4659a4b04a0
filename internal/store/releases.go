package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// An app's releases, config vars and the config versions its releases ran
// with are keyed by the VM's id, never its name: a name changes hands when a
// VM is destroyed and another made, and nothing of the old app may reach the
// new one.
var (
	bucketReleases = []byte("app_releases") // "<vm id>/<version, 8 digits>" -> Release
	bucketConfig   = []byte("app_config")   // vm id -> config vars (JSON object)
	bucketEnvs     = []byte("app_envs")     // "<vm id>/<sha256 of the vars>" -> config vars, once per distinct set

	// Before apps were keyed by id: by VM name (moved at Open, then dropped).
	legacyReleases = []byte("releases")
	legacyConfig   = []byte("config")
)

// KeepReleases is how many releases the store keeps per app (the newest; the
// current one is kept too, however old).
const KeepReleases = 50

// Release statuses.
const (
	ReleasePending   = "pending" // being built or switched to
	ReleaseSucceeded = "succeeded"
	ReleaseFailed    = "failed"
)

// Release is one version of an app: a deploy, a config change or a rollback.
type Release struct {
	VM          string    `json:"vm"` // the VM's id
	Version     int       `json:"version"`
	Description string    `json:"description"` // "Deploy 3f2a1c0", "Set FOO config vars", "Rollback to v3"
	Commit      string    `json:"commit,omitempty"`
	Build       int       `json:"build"` // the build it runs (its own version for a deploy)
	User        string    `json:"user"`  // who made it: the person's email, or "admin"
	Status      string    `json:"status"`
	Reason      string    `json:"reason,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// EnvID names the config vars the release runs with (in app_envs);
	// ReleaseEnv reads them. Env is what PutRelease stores under it.
	EnvID string            `json:"env_id,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
}

func releaseKey(vmID string, version int) []byte { return fmt.Appendf(nil, "%s/%08d", vmID, version) }

func appPrefix(vmID string) []byte { return []byte(vmID + "/") }

// PutRelease writes a release; its Env is stored once per distinct set of
// vars and referenced by EnvID. A new release drops the app's releases beyond
// KeepReleases (never the current one) and the config versions none of the
// kept ones use.
func (t *Tx) PutRelease(r *Release) error {
	if r.Env != nil {
		id, err := t.putEnv(r.VM, r.Env)
		if err != nil {
			return err
		}
		r.EnvID = id
	}
	stored := *r
	stored.Env = nil
	data, err := json.Marshal(&stored)
	if err != nil {
		return err
	}
	b := t.tx.Bucket(bucketReleases)
	key := releaseKey(r.VM, r.Version)
	isNew := b.Get(key) == nil
	if err := b.Put(key, data); err != nil {
		return err
	}
	if isNew {
		return t.pruneReleases(r.VM)
	}
	return nil
}

// putEnv stores vars under their hash (once) and returns it.
func (t *Tx) putEnv(vmID string, vars map[string]string) (string, error) {
	data, err := json.Marshal(vars) // map keys sorted: the same vars, the same bytes
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	id := hex.EncodeToString(sum[:16])
	b := t.tx.Bucket(bucketEnvs)
	key := append(appPrefix(vmID), id...)
	if b.Get(key) == nil {
		if err := b.Put(key, data); err != nil {
			return "", err
		}
	}
	return id, nil
}

// ReleaseEnv returns the config vars r runs with (empty when none).
func (t *Tx) ReleaseEnv(r *Release) (map[string]string, error) {
	out := map[string]string{}
	if r.EnvID == "" {
		return out, nil
	}
	data := t.tx.Bucket(bucketEnvs).Get(append(appPrefix(r.VM), r.EnvID...))
	if data == nil {
		return nil, fmt.Errorf("v%d's config vars are gone: %w", r.Version, ErrNotFound)
	}
	return out, json.Unmarshal(data, &out)
}

// pruneReleases keeps vmID's newest KeepReleases releases and its current
// one, and the config versions they use.
func (t *Tx) pruneReleases(vmID string) error {
	all, err := t.Releases(vmID)
	if err != nil || len(all) <= KeepReleases {
		return err
	}
	var current int
	for _, r := range all {
		if r.Status == ReleaseSucceeded {
			current = r.Version
		}
	}
	b := t.tx.Bucket(bucketReleases)
	used := map[string]bool{}
	for i, r := range all {
		if i >= len(all)-KeepReleases || r.Version == current {
			used[r.EnvID] = true
			continue
		}
		if err := b.Delete(releaseKey(vmID, r.Version)); err != nil {
			return err
		}
	}
	return deletePrefixed(t.tx.Bucket(bucketEnvs), appPrefix(vmID), func(k []byte) bool {
		return !used[string(k[len(vmID)+1:])]
	})
}

// Releases lists a VM's releases, oldest first (without their Env).
func (t *Tx) Releases(vmID string) ([]*Release, error) {
	var out []*Release
	prefix := appPrefix(vmID)
	c := t.tx.Bucket(bucketReleases).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r Release
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("release %s: %w", k, err)
		}
		out = append(out, &r)
	}
	return out, nil
}

// LastRelease returns a VM's newest release, nil when it has none, reading
// only that one.
func (t *Tx) LastRelease(vmID string) (*Release, error) {
	prefix := appPrefix(vmID)
	c := t.tx.Bucket(bucketReleases).Cursor()
	// The key after every "<id>/...": "<id>0" ('0' follows '/').
	k, v := c.Seek(append([]byte(vmID), '0'))
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return nil, nil
	}
	var r Release
	return &r, json.Unmarshal(v, &r)
}

// GetRelease returns one release of a VM.
func (t *Tx) GetRelease(vmID string, version int) (*Release, error) {
	data := t.tx.Bucket(bucketReleases).Get(releaseKey(vmID, version))
	if data == nil {
		return nil, fmt.Errorf("no release v%d: %w", version, ErrNotFound)
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
func (t *Tx) Config(vmID string) (map[string]string, error) {
	out := map[string]string{}
	data := t.tx.Bucket(bucketConfig).Get([]byte(vmID))
	if data == nil {
		return out, nil
	}
	return out, json.Unmarshal(data, &out)
}

// PutConfig replaces a VM's config vars.
func (t *Tx) PutConfig(vmID string, vars map[string]string) error {
	data, err := json.Marshal(vars)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketConfig).Put([]byte(vmID), data)
}

// CopyApp gives VM to (a fork of from) from's releases made up to upTo (all
// of them when it is zero), each with its config vars, and the config vars
// of the newest of them that succeeded (from's current ones when all are
// copied): the fork runs the builds its disk holds, and its release history
// and rollbacks are from's at that moment.
func (t *Tx) CopyApp(from, to string, upTo time.Time) error {
	all, err := t.Releases(from)
	if err != nil {
		return err
	}
	var vars map[string]string
	for _, r := range all {
		if !upTo.IsZero() && r.CreatedAt.After(upTo) {
			continue
		}
		env, err := t.ReleaseEnv(r)
		if err != nil {
			return err
		}
		c := *r
		c.VM, c.Env = to, env
		if err := t.PutRelease(&c); err != nil {
			return err
		}
		if r.Status == ReleaseSucceeded {
			vars = env
		}
	}
	if upTo.IsZero() || vars == nil {
		if vars, err = t.Config(from); err != nil {
			return err
		}
	}
	if len(vars) == 0 {
		return nil
	}
	return t.PutConfig(to, vars)
}

// DeleteApp removes a VM's releases, config vars and config versions.
func (t *Tx) DeleteApp(vmID string) error {
	if err := t.tx.Bucket(bucketConfig).Delete([]byte(vmID)); err != nil {
		return err
	}
	all := func([]byte) bool { return true }
	if err := deletePrefixed(t.tx.Bucket(bucketReleases), appPrefix(vmID), all); err != nil {
		return err
	}
	return deletePrefixed(t.tx.Bucket(bucketEnvs), appPrefix(vmID), all)
}

// Apps lists the VM ids that have releases or config vars.
func (t *Tx) Apps() ([]string, error) {
	seen := map[string]bool{}
	err := t.tx.Bucket(bucketConfig).ForEach(func(k, _ []byte) error { seen[string(k)] = true; return nil })
	if err == nil {
		err = t.tx.Bucket(bucketReleases).ForEach(func(k, _ []byte) error {
			if id, _, ok := bytes.Cut(k, []byte("/")); ok {
				seen[string(id)] = true
			}
			return nil
		})
	}
	var out []string
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, err
}

// deletePrefixed deletes b's keys under prefix that drop says to.
func deletePrefixed(b *bolt.Bucket, prefix []byte, drop func(k []byte) bool) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if drop(k) {
			keys = append(keys, bytes.Clone(k))
		}
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// migrateApps moves releases and config vars kept by VM name (before apps
// were keyed by id) to their VM's id, drops those of names no VM has, and
// removes the old buckets.
func migrateApps(tx *bolt.Tx) error {
	oldRel, oldCfg := tx.Bucket(legacyReleases), tx.Bucket(legacyConfig)
	if oldRel == nil && oldCfg == nil {
		return nil
	}
	t := &Tx{tx: tx}
	idOf := func(name string) string {
		var vm VM
		if getJSON(tx.Bucket(bucketVMs), name, &vm) != nil {
			return ""
		}
		return vm.ID
	}
	if oldCfg != nil {
		err := oldCfg.ForEach(func(k, v []byte) error {
			if id := idOf(string(k)); id != "" {
				return tx.Bucket(bucketConfig).Put([]byte(id), bytes.Clone(v))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if oldRel != nil {
		err := oldRel.ForEach(func(k, v []byte) error {
			name, _, _ := bytes.Cut(k, []byte("/"))
			id := idOf(string(name))
			if id == "" {
				return nil
			}
			var r Release
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("release %s: %w", k, err)
			}
			r.VM = id
			return t.PutRelease(&r)
		})
		if err != nil {
			return err
		}
	}
	for _, b := range [][]byte{legacyReleases, legacyConfig} {
		if tx.Bucket(b) != nil {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
	}
	return nil
}
