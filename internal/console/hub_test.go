package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/guest/guesttest"
	"golang.org/x/crypto/ssh"
)

// fakeTmux stands in for tmux in a guest: the hub's tmux client prints its
// tty and then echoes what is typed; refresh-client takes refreshDelay.
func fakeTmux(refreshDelay time.Duration) guesttest.Exec {
	return func(cmd string, ch ssh.Channel, _ bool) uint32 {
		switch {
		case strings.Contains(cmd, "tmux new-session -A"):
			fmt.Fprint(ch, "/dev/pts/3\r\n")
			guesttest.Echo(ch)
		case strings.HasPrefix(cmd, "tmux refresh-client -t /dev/pts/3"):
			time.Sleep(refreshDelay)
		case strings.HasPrefix(cmd, "tmux has-session"):
			return 1
		case strings.HasPrefix(cmd, "tmux list-sessions"):
			fmt.Fprint(ch, "fern 1700000000 1\n")
		default:
			return 127
		}
		return 0
	}
}

// hubServer serves /attach?vm=&id= bridging WebSockets to hubs over real SSH
// to the guests given by VM.
func hubServer(t *testing.T, hs *Hubs, guests map[string]*guesttest.Server) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vm, id := r.URL.Query().Get("vm"), r.URL.Query().Get("id")
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		g := guests[vm]
		dial := func() (Conn, error) {
			return &guest.Client{Addr: g.Addr, Signer: g.Signer, HostKey: g.HostKey}, nil
		}
		if err := hs.Attach(context.WithoutCancel(r.Context()), ws, Key(vm, id), id, dial, AttachOptions{}); err != nil {
			ws.Close(websocket.StatusInternalError, err.Error())
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func attach(ctx context.Context, t *testing.T, srv *httptest.Server, vm, id string) (*websocket.Conn, Control, error) {
	ws, _, err := websocket.Dial(ctx, strings.Replace(srv.URL, "http", "ws", 1)+"/attach?vm="+vm+"&id="+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	typ, data, err := ws.Read(ctx)
	var hello Control
	if err != nil {
		ws.CloseNow()
		return nil, hello, err
	}
	if typ != websocket.MessageText || json.Unmarshal(data, &hello) != nil || hello.Type != "hello" {
		t.Fatalf("first frame %q, want a hello", data)
	}
	return ws, hello, nil
}

// readUntil reads output frames until they hold want.
func readUntil(ctx context.Context, t *testing.T, ws *websocket.Conn, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var got strings.Builder
	for !strings.Contains(got.String(), want) {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v (got %q)", want, err, got.String())
		}
		if typ == websocket.MessageBinary {
			got.Write(data)
		}
	}
}

// within runs f and fails the test unless it returns within d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() { f(); close(done) }()
	select {
	case <-done:
		t.Logf("%s: %v", what, time.Since(start))
	case <-time.After(d):
		t.Fatalf("%s: still waiting after %v", what, d)
	}
}

// TestHubs_StalledGuestStallsNoOther: a guest that never answers a channel
// open stalls only the attaches to its own session, which fail by the start
// deadline; another VM's attach, the hub counts and listings go on at once.
func TestHubs_StalledGuestStallsNoOther(t *testing.T) {
	stalled := guesttest.Start(t, fakeTmux(0))
	stalled.Stalled.Store(true)
	fine := guesttest.Start(t, fakeTmux(0))
	hs := &Hubs{StartTimeout: 2 * time.Second}
	srv := hubServer(t, hs, map[string]*guesttest.Server{"vm1": stalled, "vm2": fine})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Two clients of the stalled guest's session: the first starts its hub,
	// the second waits for that start.
	type result struct {
		err  error
		took time.Duration
	}
	stuck := make(chan result, 2)
	start := time.Now()
	for range 2 {
		go func() {
			_, _, err := attach(ctx, t, srv, "vm1", "fern")
			stuck <- result{err, time.Since(start)}
		}()
		time.Sleep(100 * time.Millisecond)
	}

	var ws *websocket.Conn
	within(t, time.Second, "attach to vm2 while vm1 stalls", func() {
		var err error
		if ws, _, err = attach(ctx, t, srv, "vm2", "fern"); err != nil {
			t.Error(err)
		}
	})
	if ws == nil {
		t.FailNow()
	}
	defer ws.CloseNow()
	within(t, time.Second, "vm2 echoes", func() {
		ws.Write(ctx, websocket.MessageBinary, []byte("hello\r"))
		readUntil(ctx, t, ws, "hello")
	})
	within(t, time.Second, "hub counts", func() {
		if n, hub := hs.Attached(Key("vm2", "fern")); n != 1 || !hub {
			t.Errorf("vm2/fern: %d clients, hub %v; want 1, true", n, hub)
		}
		if _, hub := hs.Attached(Key("vm1", "fern")); hub {
			t.Error("vm1/fern counts as a hub while it is starting")
		}
	})
	within(t, time.Second, "list vm2's sessions", func() {
		c := &guest.Client{Addr: fine.Addr, Signer: fine.Signer, HostKey: fine.HostKey}
		defer c.Close()
		if s, err := List(ctx, c); err != nil || len(s) != 1 {
			t.Errorf("List = %v, %v", s, err)
		}
	})
	for range 2 {
		r := <-stuck
		t.Logf("attach to the stalled vm1: %v after %v", r.err, r.took)
		if r.err == nil || !strings.Contains(r.err.Error(), "did not answer") || r.took > 4*time.Second {
			t.Errorf("attach to the stalled vm1: %v after %v; want it to fail by the 2 s deadline", r.err, r.took)
		}
	}
	if _, hub := hs.Attached(Key("vm1", "fern")); hub {
		t.Error("the failed hub is still there")
	}
}

// TestHub_RefreshFlood: a client sending 100 refresh frames is neither cut off
// nor able to crowd the guest's sshd: refreshes are coalesced and rate
// limited, and the other client keeps getting output.
func TestHub_RefreshFlood(t *testing.T) {
	g := guesttest.Start(t, fakeTmux(100*time.Millisecond))
	g.MaxSessions = 10 // sshd's default
	hs := &Hubs{}
	srv := hubServer(t, hs, map[string]*guesttest.Server{"vm": g})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, _, err := attach(ctx, t, srv, "vm", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer a.CloseNow()
	b, _, err := attach(ctx, t, srv, "vm", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer b.CloseNow()
	a.Write(ctx, websocket.MessageBinary, []byte("ready\r")) // once echoed, the hub knows its tty
	readUntil(ctx, t, a, "ready")
	for range 100 {
		if err := a.Write(ctx, websocket.MessageText, []byte(`{"type":"refresh"}`)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if err := b.Write(ctx, websocket.MessageBinary, []byte("after-the-flood\r")); err != nil {
		t.Fatal(err)
	}
	readUntil(ctx, t, b, "after-the-flood")
	readUntil(ctx, t, a, "after-the-flood")
	if n, hub := hs.Attached(Key("vm", "fern")); n != 2 || !hub {
		t.Errorf("%d clients attached, hub %v; want both", n, hub)
	}
	opened, refused, most := g.Stats()
	refreshes := g.Execs("tmux refresh-client")
	t.Logf("100 refresh frames: %d refresh-client runs, %d channels opened (%d refused, at most %d at once)", refreshes, opened, refused, most)
	if refreshes < 1 || refreshes > 3 || opened > 4 || refused > 0 {
		t.Errorf("%d refreshes ran over %d channels (%d refused); want 1 to 3 and at most 4, none refused", refreshes, opened, refused)
	}
}

// TestHub_RefusedChannelKeepsSession: a guest refusing the hub's command
// channels (sshd's MaxSessions reached) does not end the running session.
func TestHub_RefusedChannelKeepsSession(t *testing.T) {
	g := guesttest.Start(t, fakeTmux(0))
	g.MaxSessions = 1 // the hub's PTY session only
	hs := &Hubs{}
	srv := hubServer(t, hs, map[string]*guesttest.Server{"vm": g})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := attach(ctx, t, srv, "vm", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.Write(ctx, websocket.MessageBinary, []byte("ready\r")) // once echoed, the hub knows its tty
	readUntil(ctx, t, ws, "ready")
	ws.Write(ctx, websocket.MessageText, []byte(`{"type":"refresh"}`))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, refused, _ := g.Stats(); refused > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refresh never asked for a channel")
		}
	}
	time.Sleep(100 * time.Millisecond)
	ws.Write(ctx, websocket.MessageBinary, []byte("still-here\r"))
	readUntil(ctx, t, ws, "still-here")
	if n, hub := hs.Attached(Key("vm", "fern")); n != 1 || !hub {
		t.Errorf("after a refused channel: %d clients, hub %v", n, hub)
	}
}

// TestHubs_CloseVM: closing a VM's hubs (it stopped) tells their clients why
// and leaves other VMs' hubs alone; the next attach starts a new hub.
func TestHubs_CloseVM(t *testing.T) {
	g := guesttest.Start(t, fakeTmux(0))
	hs := &Hubs{}
	srv := hubServer(t, hs, map[string]*guesttest.Server{"aaaa1111": g, "bbbb2222": g})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, helloA, err := attach(ctx, t, srv, "aaaa1111", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer a.CloseNow()
	b, _, err := attach(ctx, t, srv, "bbbb2222", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer b.CloseNow()
	hs.CloseVM("aaaa1111", "the VM stopped")
	for {
		_, _, err := a.Read(ctx)
		if err == nil {
			continue
		}
		if websocket.CloseStatus(err) != websocket.StatusGoingAway || !strings.Contains(err.Error(), "the VM stopped") {
			t.Errorf("client of the stopped VM: %v", err)
		}
		break
	}
	b.Write(ctx, websocket.MessageBinary, []byte("other-vm\r"))
	readUntil(ctx, t, b, "other-vm")
	a2, hello2, err := attach(ctx, t, srv, "aaaa1111", "fern")
	if err != nil {
		t.Fatal(err)
	}
	defer a2.CloseNow()
	if hello2.Stream == helloA.Stream {
		t.Error("an attach after CloseVM joined the closed hub")
	}
}

// TestHubs_ConcurrentJoins: many clients attaching to one session at once
// share one hub (one PTY session in the guest).
func TestHubs_ConcurrentJoins(t *testing.T) {
	g := guesttest.Start(t, fakeTmux(0))
	hs := &Hubs{}
	srv := hubServer(t, hs, map[string]*guesttest.Server{"vm": g})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	streams := make(chan string, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws, hello, err := attach(ctx, t, srv, "vm", "fern")
			if err != nil {
				t.Error(err)
				return
			}
			streams <- hello.Stream
			t.Cleanup(func() { ws.CloseNow() })
		}()
	}
	wg.Wait()
	close(streams)
	first := ""
	for s := range streams {
		if first == "" {
			first = s
		} else if s != first {
			t.Errorf("clients got streams %s and %s: two hubs for one session", first, s)
		}
	}
	if n := g.Execs("cd ~ && tty && exec tmux new-session"); n != 1 {
		t.Errorf("%d tmux clients started in the guest, want 1", n)
	}
}
