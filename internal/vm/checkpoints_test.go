package vm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCheckpointFiles: a checkpoint holds the disk as it was when taken,
// whatever the VM writes after; one left half made (v<N>.new) is never
// listed and is removed; the oldest beyond keep are pruned; ids read as v<N>.
func TestCheckpointFiles(t *testing.T) {
	m, _, _ := testManager(t)
	ctx := context.Background()
	id := "ck01"
	if err := os.MkdirAll(m.dir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(m.dir(id), dataFile)
	write := func(s string) {
		if err := os.WriteFile(data, bytes.Repeat([]byte(s), 1<<16), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	when := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for n, content := range []string{"one", "two", "three"} {
		write(content)
		if _, err := m.writeCheckpoint(ctx, id, Checkpoint{N: n + 1, Created: when, Message: "at " + content, By: "ann@example.com"}); err != nil {
			t.Fatal(err)
		}
	}
	write("later")
	if _, err := m.writeCheckpoint(ctx, id, Checkpoint{N: 2}); err == nil {
		t.Error("a second v2 was made")
	}
	// A crash in the middle of v4.
	half := m.checkpointDir(id, 4) + checkpointNewExt
	os.MkdirAll(half, 0o700)
	os.WriteFile(filepath.Join(half, dataFile), []byte("partial"), 0o600)

	cps, err := m.checkpoints(id)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cps {
		ids = append(ids, c.ID())
	}
	if strings.Join(ids, ",") != "v1,v2,v3" {
		t.Fatalf("checkpoints %v, want v1,v2,v3", ids)
	}
	if c := cps[1]; c.Message != "at two" || c.By != "ann@example.com" || !c.Created.Equal(when) || c.Bytes <= 0 {
		t.Errorf("v2: %+v", c)
	}
	if got, _ := os.ReadFile(filepath.Join(m.checkpointDir(id, 2), dataFile)); !bytes.HasPrefix(got, []byte("twotwo")) {
		t.Errorf("v2's disk starts %q, want the disk as it was then", got[:6])
	}
	m.removeHalfCheckpoints(id)
	if _, err := os.Stat(half); err == nil {
		t.Error("a half-made checkpoint was left")
	}
	gone, err := m.pruneCheckpoints(id, 2)
	if err != nil || strings.Join(gone, ",") != "v1" {
		t.Errorf("pruned %v (%v), want v1", gone, err)
	}
	for _, s := range []string{"v3", "3"} {
		if n, err := ParseCheckpointID(s); err != nil || n != 3 {
			t.Errorf("ParseCheckpointID(%q) = %d, %v", s, n, err)
		}
	}
	for _, s := range []string{"", "v0", "vx", "-1", "v1.5"} {
		if _, err := ParseCheckpointID(s); err == nil {
			t.Errorf("ParseCheckpointID(%q) accepted", s)
		}
	}
}
