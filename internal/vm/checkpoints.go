package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/disk"
)

// A VM's checkpoints are directories in its own: checkpoints/v<N>/ holds
// data.img, a copy (a reflink where the store can) of the VM's disk when it
// was taken, and manifest.json. A checkpoint being made is v<N>.new until it
// is whole: its rename is its commit, so one a crash interrupted is never
// listed, and the next daemon removes it.
const (
	checkpointsDir   = "checkpoints"
	checkpointMeta   = "manifest.json"
	checkpointNewExt = ".new"
)

// Checkpoint is one of a VM's checkpoints as its directory records it.
type Checkpoint struct {
	N       int       `json:"n"`
	Created time.Time `json:"created"`
	Message string    `json:"message,omitempty"`
	By      string    `json:"by,omitempty"`   // who asked for it
	Auto    string    `json:"auto,omitempty"` // why fcm took it by itself
	// Bytes is what it holds that nothing else shares (filled when listed).
	Bytes int64 `json:"-"`
}

// ID is how users name it: v<N>.
func (c Checkpoint) ID() string { return "v" + strconv.Itoa(c.N) }

// ParseCheckpointID reads v<N> (or N).
func ParseCheckpointID(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "v"))
	if err != nil || n < 1 {
		return 0, invalidf("%q is not a checkpoint id: want v1, v2, ...", s)
	}
	return n, nil
}

// checkpointDir is checkpoint n's directory of VM id's.
func (m *Manager) checkpointDir(id string, n int) string {
	return filepath.Join(m.dir(id), checkpointsDir, "v"+strconv.Itoa(n))
}

// writeCheckpoint copies VM id's disk into checkpoint c, whole or not at
// all. The caller keeps the disk still meanwhile (the VM paused or not
// running).
func (m *Manager) writeCheckpoint(ctx context.Context, id string, c Checkpoint) (disk.Method, error) {
	final := m.checkpointDir(id, c.N)
	tmp := final + checkpointNewExt
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	fail := func(err error) (disk.Method, error) {
		os.RemoveAll(tmp)
		return "", err
	}
	method, err := disk.Clone(ctx, filepath.Join(m.dir(id), dataFile), filepath.Join(tmp, dataFile))
	if err != nil {
		return fail(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fail(err)
	}
	if err := writeSynced(filepath.Join(tmp, checkpointMeta), b); err != nil {
		return fail(err)
	}
	if err := syncPath(filepath.Join(tmp, dataFile)); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(final); err == nil {
		return fail(fmt.Errorf("checkpoint v%d of vm %s exists already", c.N, id))
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	return method, syncPath(filepath.Dir(final))
}

// checkpoints lists VM id's whole checkpoints, oldest first, with what each
// holds of its own.
func (m *Manager) checkpoints(id string) ([]Checkpoint, error) {
	entries, err := os.ReadDir(filepath.Join(m.dir(id), checkpointsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Checkpoint
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "v"))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "v") || err != nil {
			continue // v<N>.new: not whole
		}
		b, err := os.ReadFile(filepath.Join(m.dir(id), checkpointsDir, e.Name(), checkpointMeta))
		if err != nil {
			return nil, err
		}
		var c Checkpoint
		if err := json.Unmarshal(b, &c); err != nil || c.N != n {
			return nil, fmt.Errorf("checkpoint %s of vm %s: a damaged manifest", e.Name(), id)
		}
		c.Bytes, _ = disk.Exclusive(filepath.Join(m.dir(id), checkpointsDir, e.Name(), dataFile))
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out, nil
}

// removeHalfCheckpoints removes the checkpoints of VM id a crash left half
// made.
func (m *Manager) removeHalfCheckpoints(id string) {
	matches, _ := filepath.Glob(filepath.Join(m.dir(id), checkpointsDir, "v*"+checkpointNewExt))
	for _, p := range matches {
		m.log.Info("removing a checkpoint a crash left half made", "vm", id, "dir", p)
		os.RemoveAll(p)
	}
}

// pruneCheckpoints removes VM id's oldest checkpoints beyond keep, and
// returns the ids removed.
func (m *Manager) pruneCheckpoints(id string, keep int) ([]string, error) {
	cps, err := m.checkpoints(id)
	if err != nil || len(cps) <= keep {
		return nil, err
	}
	var gone []string
	for _, c := range cps[:len(cps)-keep] {
		if err := os.RemoveAll(m.checkpointDir(id, c.N)); err != nil {
			return gone, err
		}
		gone = append(gone, c.ID())
	}
	return gone, nil
}

// writeSynced writes a new file and flushes it to disk.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncPath flushes a file or directory to disk.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
