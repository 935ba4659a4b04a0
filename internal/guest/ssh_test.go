package guest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/guest/guesttest"
	"golang.org/x/crypto/ssh"
)

func clientOf(s *guesttest.Server) *guest.Client {
	return &guest.Client{Addr: s.Addr, Signer: s.Signer, HostKey: s.HostKey}
}

// heap is the live heap after a full collection.
func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestRun_OutputCapped: a guest command printing 100 MB (on stdout, then on
// stderr) fails with an error naming the cap, and the daemon's heap barely grows.
func TestRun_OutputCapped(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	s := guesttest.Start(t, func(cmd string, ch ssh.Channel, _ bool) uint32 {
		var w io.Writer = ch
		if cmd == "flood stderr" {
			w = ch.Stderr()
		}
		if strings.HasPrefix(cmd, "flood") {
			for i := 0; i < (100<<20)/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return 1
				}
			}
			return 0
		}
		fmt.Fprint(ch, "fine")
		return 0
	})
	c := clientOf(s)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.Run(ctx, "true"); err != nil { // the connection's own cost is not counted
		t.Fatal(err)
	}
	for _, cmd := range []string{"flood stdout", "flood stderr"} {
		before := heap()
		start := time.Now()
		out, err := c.Run(ctx, cmd)
		grew := int64(heap()) - int64(before)
		t.Logf("%s: %v after %v, heap grew %d KiB", cmd, err, time.Since(start), grew>>10)
		if !errors.Is(err, guest.ErrOutputTooLarge) || !strings.Contains(err.Error(), "1 MiB") || out != nil {
			t.Errorf("%s: %d bytes, err %v; want an error naming the 1 MiB cap", cmd, len(out), err)
		}
		if grew > 8<<20 {
			t.Errorf("%s: heap grew %d MiB", cmd, grew>>20)
		}
	}
	if out, err := c.Run(ctx, "after"); err != nil || string(out) != "fine" {
		t.Errorf("a command after the floods: %q, %v", out, err)
	}
}

// TestRun_GuestTextInErrorsIsShortAndInert: a failing command's stderr is
// quoted in the error only in part, with terminal escapes made harmless.
func TestRun_GuestTextInErrorsIsShortAndInert(t *testing.T) {
	s := guesttest.Start(t, func(cmd string, ch ssh.Channel, _ bool) uint32 {
		fmt.Fprint(ch.Stderr(), "\x1b]0;pwned\x07"+strings.Repeat("e", 100<<10))
		return 3
	})
	c := clientOf(s)
	defer c.Close()
	_, err := c.Run(context.Background(), "fail")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("err %v, want exit status 3", err)
	}
	if msg := err.Error(); len(msg) > 1024 || strings.ContainsAny(msg, "\x1b\x07") {
		t.Errorf("error text of %d bytes, escapes kept: %q", len(msg), msg[:min(len(msg), 200)])
	}
}

// TestClient_Deadlines: a guest that accepts TCP but never speaks SSH, or
// that never answers a channel open, costs a caller no more than its deadline.
func TestClient_Deadlines(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	s := guesttest.Start(t, func(string, ssh.Channel, bool) uint32 { return 0 })
	silent := &guest.Client{Addr: l.Addr().String(), Signer: s.Signer, HostKey: s.HostKey}
	stalled := clientOf(s)
	defer stalled.Close()
	if _, err := stalled.Run(context.Background(), "true"); err != nil {
		t.Fatal(err)
	}
	s.Stalled.Store(true)
	for name, run := range map[string]func(context.Context) error{
		"handshake": func(ctx context.Context) error { _, err := silent.Run(ctx, "true"); return err },
		"run":       func(ctx context.Context) error { _, err := stalled.Run(ctx, "true"); return err },
		"session":   func(ctx context.Context) error { _, err := stalled.Session(ctx); return err },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		start := time.Now()
		err := run(ctx)
		took := time.Since(start)
		cancel()
		t.Logf("%s: %v after %v", name, err, took)
		if err == nil || took > 2*time.Second {
			t.Errorf("%s against a guest that does not answer: %v after %v", name, err, took)
		}
	}
}

// TestClient_KeepAliveDropsADeadGuest: once the guest stops answering, the
// keepalive probe goes unanswered and the connection, with the session
// running on it, is closed.
func TestClient_KeepAliveDropsADeadGuest(t *testing.T) {
	s := guesttest.Start(t, func(_ string, ch ssh.Channel, _ bool) uint32 { guesttest.Echo(ch); return 0 })
	c := clientOf(s)
	c.KeepAlive, c.KeepAliveTimeout = 100*time.Millisecond, 300*time.Millisecond
	defer c.Close()
	sess, err := c.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe() // held open: cat runs until the connection goes
	defer stdin.Close()
	if err := sess.Start("cat"); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- sess.Wait() }()
	select {
	case err := <-ended:
		t.Fatalf("the session ended while the guest answers keepalives: %v", err)
	case <-time.After(time.Second):
	}
	s.Stalled.Store(true)
	start := time.Now()
	select {
	case err := <-ended:
		t.Logf("session ended %v after the guest stalled: %v", time.Since(start), err)
	case <-time.After(3 * time.Second):
		t.Fatal("the connection to a guest that stopped answering is still up after 3 s")
	}
}

// TestRun_RefusedChannelKeepsTheConnection: a guest refusing a channel (at
// sshd's MaxSessions) fails that command only; the session already running on
// the same connection goes on.
func TestRun_RefusedChannelKeepsTheConnection(t *testing.T) {
	s := guesttest.Start(t, func(cmd string, ch ssh.Channel, _ bool) uint32 {
		if cmd == "cat" {
			guesttest.Echo(ch)
		}
		return 0
	})
	s.MaxSessions = 1
	c := clientOf(s)
	defer c.Close()
	sess, err := c.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("cat"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Run(context.Background(), "true")
	var refused *ssh.OpenChannelError
	if !errors.As(err, &refused) {
		t.Fatalf("Run past MaxSessions: %v, want a refused channel", err)
	}
	fmt.Fprint(stdin, "still-here")
	buf := make([]byte, 10)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "still-here" {
		t.Fatalf("the running session after a refused channel: %q, %v", buf, err)
	}
	stdin.Close()
	sess.Wait()
	if _, err := c.Run(context.Background(), "true"); err != nil {
		t.Errorf("Run once a session is free: %v", err)
	}
	if opened, refusedN, _ := s.Stats(); refusedN != 1 || opened != 2 {
		t.Errorf("server saw %d channels opened, %d refused; want 2 and 1", opened, refusedN)
	}
}

// TestRun_DeadlineKeepsTheConnection: a command that outlives its deadline is
// given up alone; the session beside it on the connection goes on.
func TestRun_DeadlineKeepsTheConnection(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := guesttest.Start(t, func(cmd string, ch ssh.Channel, _ bool) uint32 {
		switch cmd {
		case "cat":
			guesttest.Echo(ch)
		case "hang":
			<-release
		}
		return 0
	})
	c := clientOf(s)
	defer c.Close()
	sess, err := c.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	defer stdin.Close()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("cat"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Run(ctx, "hang"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("a hanging command: %v after %v", err, time.Since(start))
	}
	fmt.Fprint(stdin, "still-here")
	buf := make([]byte, 10)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "still-here" {
		t.Fatalf("the session beside a timed-out command: %q, %v", buf, err)
	}
	if _, err := c.Run(context.Background(), "true"); err != nil {
		t.Errorf("Run after a timed-out command: %v", err)
	}
}
