package store

import (
	"path/filepath"
	"testing"
	"time"
)

// TestAuditEvents: events are numbered in order, read back after a
// sequence number, and the oldest go once they are past the age bound.
func TestAuditEvents(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	add := func(at time.Time, action string) {
		if err := s.Update(func(tx *Tx) error {
			return tx.AddAuditEvent(&AuditEvent{At: at, Who: "ann@example.com", Action: action, Result: "ok"})
		}); err != nil {
			t.Fatal(err)
		}
	}
	add(now.Add(-100*24*time.Hour), "create")
	add(now.Add(-80*24*time.Hour), "stop")
	read := func(after uint64) (out []string) {
		s.View(func(tx *Tx) error {
			return tx.AuditEvents(after, func(e *AuditEvent) bool { out = append(out, e.Action); return true })
		})
		return out
	}
	if got := read(0); len(got) != 2 {
		t.Fatalf("events: %v", got)
	}
	add(now, "destroy") // the 100-day-old one goes; the 80-day-old one is kept
	if got := read(0); len(got) != 2 || got[0] != "stop" || got[1] != "destroy" {
		t.Errorf("after the bound: %v", got)
	}
	if got := read(2); len(got) != 1 || got[0] != "destroy" {
		t.Errorf("after seq 2: %v", got)
	}
}
