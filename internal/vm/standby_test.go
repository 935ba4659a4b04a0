package vm

import (
	"context"
	"sync"
	"testing"
)

// waiting is a standby stand-in: alive until killed.
type waiting struct {
	mu     sync.Mutex
	killed bool
}

func (w *waiting) PID() int                               { return 1 }
func (w *waiting) Shutdown(context.Context) error         { return nil }
func (w *waiting) Wait(context.Context) error             { return nil }
func (w *waiting) Kill() error                            { w.mu.Lock(); w.killed = true; w.mu.Unlock(); return nil }
func (w *waiting) Running() bool                          { w.mu.Lock(); defer w.mu.Unlock(); return !w.killed }
func (w *waiting) Status(context.Context) (string, error) { return "inmigrate", nil }

// TestStandbys: at most Standbys are kept, the oldest ended first; a wake
// takes its VM's (once); a dead one is not handed out; a drop ends it.
func TestStandbys(t *testing.T) {
	m, _, _ := testManager(t)
	m.cfg.Standbys = 2
	a, b, c := &waiting{}, &waiting{}, &waiting{}
	m.keepStandby("a", a)
	m.keepStandby("b", b)
	m.keepStandby("c", c)
	if a.Running() || !b.Running() || !c.Running() {
		t.Fatalf("after three standbys with room for two: a %v b %v c %v, want a ended", a.Running(), b.Running(), c.Running())
	}
	if got := m.takeStandby("a"); got != nil {
		t.Errorf("an ended standby was handed out")
	}
	if got := m.takeStandby("b"); got != b {
		t.Errorf("takeStandby(b) = %v", got)
	}
	if got := m.takeStandby("b"); got != nil {
		t.Errorf("a standby was handed out twice")
	}
	c.Kill()
	if got := m.takeStandby("c"); got != nil {
		t.Errorf("a standby that died was handed out")
	}
	d := &waiting{}
	m.keepStandby("d", d)
	m.dropStandby("d")
	if d.Running() {
		t.Error("dropStandby left it running")
	}
	if !isStandby(context.Background(), &waiting{}) {
		t.Error("a hypervisor in status inmigrate is not taken for a standby")
	}
}
