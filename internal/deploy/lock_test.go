package deploy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// lockFixture is a Service on a real store holding VM x (id a1, owner alice).
func lockFixture(t *testing.T) (*Service, *store.VM) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	x := &store.VM{ID: "a1", Name: "x", Owner: "alice", State: api.StateRunning}
	if err := st.Update(func(tx *store.Tx) error { return tx.InsertVM(x) }); err != nil {
		t.Fatal(err)
	}
	return &Service{DataDir: t.TempDir(), Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, x
}

// waitLock takes vm's lock in the background; the result comes on the channel.
func waitLock(s *Service, vm *store.VM) (chan error, *bytes.Buffer) {
	var out bytes.Buffer
	got := make(chan error, 1)
	go func() {
		_, unlock, err := s.lock(context.Background(), vm, "test", &out)
		if err == nil {
			unlock()
		}
		got <- err
	}()
	return got, &out
}

func TestLock_WaitersOfADestroyedVMGiveUp(t *testing.T) {
	s, x := lockFixture(t)
	_, unlock, err := s.lock(context.Background(), x, "a deploy", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	got, _ := waitLock(s, x)
	time.Sleep(50 * time.Millisecond)
	// x is destroyed, and bob makes a VM of the same name.
	s.Store.Update(func(tx *store.Tx) error { return tx.DeleteVM("x") })
	s.Forget(x.ID)
	s.Store.Update(func(tx *store.Tx) error {
		return tx.InsertVM(&store.VM{ID: "b1", Name: "x", Owner: "bob", State: api.StateRunning})
	})
	select {
	case err := <-got:
		if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), `no app named "x"`) {
			t.Errorf("the waiter of the destroyed x got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter of the destroyed x still waits")
	}
	// bob's x has a lock of its own: nothing of alice's holds it.
	bobs := &store.VM{ID: "b1", Name: "x", Owner: "bob"}
	if _, u, err := s.lock(context.Background(), bobs, "bob's deploy", io.Discard); err != nil {
		t.Errorf("bob's x: %v", err)
	} else {
		u()
	}
	// Work authorized for alice's x that only now asks for the lock is refused.
	if _, _, err := s.lock(context.Background(), x, "late", io.Discard); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a late lock of the destroyed x: %v", err)
	}
}

func TestLock_RechecksTheOwnerOnceItsTurnComes(t *testing.T) {
	s, x := lockFixture(t)
	_, unlock, err := s.lock(context.Background(), x, "a deploy", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got, out := waitLock(s, x)
	time.Sleep(50 * time.Millisecond)
	// users rm alice --vms keep: x is the admin's now.
	if _, err := s.Store.UpdateVM("x", func(v *store.VM) error { v.Owner = "admin"; return nil }); err != nil {
		t.Fatal(err)
	}
	unlock()
	select {
	case err := <-got:
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("alice's waiter on x, now the admin's, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter still waits")
	}
	if !strings.Contains(out.String(), "-----> Waiting: a deploy") {
		t.Errorf("the waiter was not told it waits: %q", out.String())
	}
}

func TestLock_WaitIsBounded(t *testing.T) {
	s, x := lockFixture(t)
	defer func(d time.Duration) { LockWait = d }(LockWait)
	LockWait = 100 * time.Millisecond
	_, unlock, err := s.lock(context.Background(), x, "a stuck deploy", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	got, _ := waitLock(s, x)
	select {
	case err := <-got:
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "a stuck deploy") {
			t.Errorf("waiting past LockWait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter waits past LockWait")
	}
}

func TestOutputBounds(t *testing.T) {
	var file bytes.Buffer
	c := &capped{w: &file, max: 10}
	for range 5 {
		if n, err := c.Write([]byte("12345678")); n != 8 || err != nil {
			t.Fatalf("capped write: %d %v", n, err)
		}
	}
	if !strings.HasPrefix(file.String(), "1234567812\n !     (output truncated") || strings.Count(file.String(), "truncated") != 1 {
		t.Errorf("capped transcript: %q", file.String())
	}
	var sink bytes.Buffer
	overs := 0
	l := &limited{w: &sink, max: 16, over: func() { overs++ }}
	l.Write([]byte("0123456789"))
	if _, err := l.Write([]byte("0123456789")); !errors.Is(err, ErrOutputTooLarge) {
		t.Errorf("past the limit: %v", err)
	}
	l.Write([]byte("x"))
	if overs != 1 || sink.Len() != 10 {
		t.Errorf("over called %d times, %d bytes passed", overs, sink.Len())
	}
	tl := &tail{size: 4}
	tl.Write([]byte("abcdef"))
	tl.Write([]byte("gh"))
	if tl.String() != "efgh" {
		t.Errorf("tail: %q", tl.String())
	}
}

func TestConfigBounds(t *testing.T) {
	many := map[string]string{}
	for i := range MaxConfigVars + 1 {
		many["K"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+strings.Repeat("y", i/26)] = "v"
	}
	big := map[string]string{"A": strings.Repeat("v", MaxConfigValue+1)}
	total := map[string]string{}
	for i := range 20 {
		total[string(rune('A'+i))] = strings.Repeat("v", MaxConfigValue)
	}
	for name, c := range map[string]map[string]string{"1,001 vars": many, "a 64 KiB+1 value": big, "1.25 MiB in all": total} {
		if err := checkConfig(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := checkConfig(map[string]string{"A": strings.Repeat("v", MaxConfigValue)}); err != nil {
		t.Errorf("a 64 KiB value: %v", err)
	}
}

func TestLock_AbandonedWhileTheVMIsDestroyed(t *testing.T) {
	s, x := lockFixture(t)
	_, unlock, err := s.lock(context.Background(), x, "a deploy", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := waitLock(s, x)
	time.Sleep(50 * time.Millisecond)
	// The destroy begins: the record is still there, but nothing may act.
	s.Abandon(x.ID)
	unlock()
	select {
	case err := <-got:
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the waiter of a VM being destroyed got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter still waits")
	}
	if _, _, err := s.lock(context.Background(), x, "late", io.Discard); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a lock of a VM being destroyed: %v", err)
	}
	// The destroy failed: the app goes on.
	s.Revive(x.ID)
	if _, u, err := s.lock(context.Background(), x, "after", io.Discard); err != nil {
		t.Errorf("a lock after Revive: %v", err)
	} else {
		u()
	}
}
