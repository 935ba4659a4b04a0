package console

import (
	"testing"
	"time"
)

// TestBucket: a client gets ControlBurst control frames at once, then
// ControlRate a second; the rest are dropped.
func TestBucket(t *testing.T) {
	b := newBucket(ControlRate, ControlBurst)
	now := time.Unix(1700000000, 0)
	count := func(n int, at time.Time) int {
		ok := 0
		for range n {
			if b.take(at) {
				ok++
			}
		}
		return ok
	}
	if got := count(100, now); got != ControlBurst {
		t.Errorf("a burst of 100 let %d through, want %d", got, ControlBurst)
	}
	if got := count(100, now.Add(time.Second)); got != ControlRate {
		t.Errorf("a second later %d got through, want %d", got, ControlRate)
	}
	if got := count(100, now.Add(time.Hour)); got != ControlBurst {
		t.Errorf("after an hour's rest %d got through, want the burst %d", got, ControlBurst)
	}
}
