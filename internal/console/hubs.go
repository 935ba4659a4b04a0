package console

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Hubs holds a hub for every session that has clients: one tmux client in the
// VM (an SSH PTY running `tmux new-session -A -s id`) whose output goes to a
// ring buffer that every attached WebSocket reads at its own pace. Hubs are
// keyed "<vm id>/<session id>". No guest I/O happens under the Hubs' lock: a
// hub is published as starting first, so one guest that stops answering
// stalls only the clients of its own session.
type Hubs struct {
	// Grace is how long a hub outlives a last client that dropped without
	// detaching, so that a reconnect resumes without losing output.
	Grace time.Duration
	// StartTimeout bounds starting a hub (opening the PTY session and tmux in
	// the VM); zero means DefaultStartTimeout.
	StartTimeout time.Duration
	Log          *slog.Logger

	mu sync.Mutex
	m  map[string]*Hub
}

// DefaultStartTimeout bounds starting a hub when Hubs.StartTimeout is zero.
const DefaultStartTimeout = 20 * time.Second

// Hub commands (refresh-client, has-session) run on the hub's own SSH
// connection beside its PTY session; at most maxCommands at once keeps the
// connection below sshd's MaxSessions (10 by default).
const maxCommands = 3

// Key names session id of VM vmID among all VMs' sessions.
func Key(vmID, id string) string { return vmID + "/" + id }

// Attached returns how many clients are attached to session key through the
// daemon, and whether a hub (itself one tmux client in the VM) exists for it.
// It never waits for a guest.
func (hs *Hubs) Attached(key string) (clients int, hub bool) {
	hs.mu.Lock()
	h := hs.m[key]
	hs.mu.Unlock()
	if h == nil {
		return 0, false
	}
	select {
	case <-h.ready:
	default:
		return 0, false // still starting
	}
	if h.startErr != nil {
		return 0, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients, true
}

// CloseVM closes every hub of VM vmID (stopped or destroyed): their clients
// are told the VM went away, and a later attach starts afresh.
func (hs *Hubs) CloseVM(vmID, reason string) {
	hs.mu.Lock()
	var hubs []*Hub
	for k, h := range hs.m {
		if strings.HasPrefix(k, vmID+"/") {
			hubs = append(hubs, h)
			delete(hs.m, k)
		}
	}
	hs.mu.Unlock()
	for _, h := range hubs {
		h.mu.Lock()
		h.gone = reason
		h.mu.Unlock()
		go func() {
			<-h.ready // a starting hub sees it is no longer mapped and closes itself
			if h.startErr == nil {
				h.conn.Close() // the pump sees the end and lets the clients go
			}
		}()
	}
}

func (hs *Hubs) logger() *slog.Logger {
	if hs.Log != nil {
		return hs.Log
	}
	return slog.New(slog.DiscardHandler)
}

// join returns the live hub for key with a client counted in, starting one
// (dial gives it its connection) if there is none. fresh says it was started.
// A client of a hub being started waits for it, within ctx.
func (hs *Hubs) join(ctx context.Context, key, id string, dial func() (Conn, error), cols, rows int) (h *Hub, fresh bool, err error) {
	for {
		hs.mu.Lock()
		h = hs.m[key]
		if h == nil {
			break // start one, below; still locked
		}
		hs.mu.Unlock()
		select {
		case <-h.ready:
		case <-ctx.Done():
			return nil, false, fmt.Errorf("attach %s: %w", id, ctx.Err())
		}
		if h.startErr != nil {
			return nil, false, h.startErr
		}
		h.mu.Lock()
		live := !h.closed && h.end == nil && h.gone == ""
		if live {
			h.clients++
			if h.idle != nil {
				h.idle.Stop()
				h.idle = nil
			}
		}
		h.mu.Unlock()
		if live {
			return h, false, nil
		}
		hs.remove(h) // ending: make way for a new one
	}
	var sid [6]byte
	rand.Read(sid[:])
	h = &Hub{hubs: hs, key: key, id: id, stream: hex.EncodeToString(sid[:]), ready: make(chan struct{}),
		cmds: make(chan struct{}, maxCommands), out: newRing(RingSize), cols: cols, rows: rows, clients: 1}
	h.changed = sync.NewCond(&h.mu)
	if hs.m == nil {
		hs.m = map[string]*Hub{}
	}
	hs.m[key] = h
	hs.mu.Unlock()

	err = h.start(ctx, dial)
	if err == nil {
		hs.mu.Lock()
		mapped := hs.m[key] == h
		hs.mu.Unlock()
		if !mapped { // CloseVM meanwhile
			h.conn.Close()
			err = fmt.Errorf("attach %s: %s", id, h.goneReason())
		}
	}
	if err != nil {
		hs.remove(h)
		h.startErr = err
		close(h.ready)
		return nil, false, err
	}
	close(h.ready)
	return h, true, nil
}

func (h *Hub) goneReason() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone == "" {
		return "closed"
	}
	return h.gone
}

func (hs *Hubs) remove(h *Hub) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.m[h.key] == h {
		delete(hs.m, h.key)
	}
}

// start dials and starts the hub's tmux client in the VM, within ctx and the
// start timeout: a guest that does not answer in time has its connection
// closed, which ends every step still waiting on it.
func (h *Hub) start(ctx context.Context, dial func() (Conn, error)) error {
	limit := h.hubs.StartTimeout
	if limit <= 0 {
		limit = DefaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	conn, err := dial()
	if err != nil {
		return err
	}
	type result struct {
		sess   *ssh.Session
		stdin  io.Writer
		stdout io.Reader
		err    error
	}
	got := make(chan result, 1)
	go func() {
		s, in, out, err := startTmux(ctx, conn, h.id, h.cols, h.rows)
		got <- result{s, in, out, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			conn.Close()
			return r.err
		}
		h.conn, h.sess, h.stdin = conn, r.sess, r.stdin
		go h.pump(r.stdout)
		return nil
	case <-ctx.Done():
		conn.Close() // unblocks startTmux
		return fmt.Errorf("attach %s: the VM did not answer: %w", h.id, ctx.Err())
	}
}

func startTmux(ctx context.Context, conn Conn, id string, cols, rows int) (*ssh.Session, io.Writer, io.Reader, error) {
	sess, err := conn.Session(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("attach %s: %w", id, err)
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty("xterm-256color", rows, cols, modes); err != nil {
		sess.Close()
		return nil, nil, nil, fmt.Errorf("attach %s: pty: %w", id, err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, nil, nil, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, nil, nil, err
	}
	sess.Stderr = sess.Stdout
	// The first line is the PTY's name: with it the hub can ask tmux to redraw
	// this client's screen for a client that joins late.
	if err := sess.Start("cd ~ && tty && exec tmux new-session -A -s " + id); err != nil {
		sess.Close()
		return nil, nil, nil, fmt.Errorf("attach %s: %w", id, err)
	}
	return sess, stdin, stdout, nil
}

// pump copies the tmux client's output into the ring until it exits, then
// records why and lets the clients go.
