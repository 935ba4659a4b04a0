package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// RingSize is how much recent output each attached session keeps, so that a
// client whose connection dropped gets exactly what it missed.
const RingSize = 64 << 10

// Conn is a hub's own connection to the VM (guest.Client); the hub closes it.
type Conn interface {
	Opener
	Runner
	Close() error
}

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

// Hub is one session's live tmux client in the VM, shared by its attached clients.
type Hub struct {
	hubs       *Hubs
	key        string
	id         string
	stream     string        // names this hub's output stream in hello messages
	ready      chan struct{} // closed once started (or failed to)
	startErr   error         // set before ready is closed
	conn       Conn
	sess       *ssh.Session
	stdin      io.Writer
	inMu       sync.Mutex    // one client's keystrokes at a time
	cmds       chan struct{} // a slot per hub command running in the VM
	refreshing atomic.Bool   // a refresh is in flight; more are dropped

	mu      sync.Mutex
	changed *sync.Cond // output, an end, or a client leaving
	out     ring
	tty     string // the tmux client's terminal in the VM, for refresh-client
	clients int
	cols    int
	rows    int
	end     *ending
	closed  bool   // closed on purpose (idle): not an end of the session
	gone    string // closed because the VM stopped or went away: why
	idle    *time.Timer
}

// ending says why a hub's tmux client went away.
type ending struct {
	ended  bool // the session is gone: its shell exited or it was killed
	status int
	reason string // when not ended: why clients were cut off
}

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
func (h *Hub) pump(stdout io.Reader) {
	buf := make([]byte, 32<<10)
	var first []byte // until the tty line is complete
	ttyDone := false
	for {
		n, err := stdout.Read(buf)
		data := buf[:n]
		if !ttyDone && n > 0 {
			first = append(first, data...)
			i := bytes.IndexByte(first, '\n')
			if i < 0 && len(first) < 64 && err == nil {
				continue
			}
			ttyDone = true
			data = first
			if tty := strings.TrimSpace(string(first[:max(i, 0)])); i >= 0 && ttyRE.MatchString(tty) {
				h.mu.Lock()
				h.tty = tty
				h.mu.Unlock()
				data = first[i+1:]
			}
		}
		if len(data) > 0 {
			h.mu.Lock()
			h.out.write(data)
			h.changed.Broadcast()
			h.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	end := h.why(h.sess.Wait())
	h.mu.Lock()
	h.end = end
	h.changed.Broadcast()
	closed := h.closed
	h.mu.Unlock()
	if !closed {
		h.hubs.logger().Info("console hub ended", "session", h.key, "ended", end.ended, "reason", end.reason)
	}
	h.hubs.remove(h)
	h.conn.Close()
}

// why tells a session that ended (its shell exited, or it was killed) from a
// tmux client that was detached inside the VM or a lost connection.
func (h *Hub) why(err error) *ending {
	h.mu.Lock()
	closed, gone := h.closed, h.gone
	h.mu.Unlock()
	if gone != "" {
		return &ending{reason: gone}
	}
	if closed {
		return &ending{reason: "detached"}
	}
	status := 0
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		status = ee.ExitStatus()
	} else if err != nil {
		return &ending{reason: "lost the connection to the VM"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = h.run(ctx, "tmux has-session -t ="+h.id)
	switch {
	case err == nil:
		return &ending{reason: "detached inside the VM"}
	case errors.As(err, &ee):
		return &ending{ended: true, status: status}
	default:
		return &ending{reason: "lost the connection to the VM"}
	}
}

// leave counts a client out. The last one out closes the hub (detaching tmux)
// at once if it detached, or after the grace period if it dropped.
func (h *Hub) leave(detached bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients--
	h.changed.Broadcast()
	if h.clients > 0 || h.end != nil || h.closed {
		return
	}
	if detached || h.hubs.Grace <= 0 {
		h.closeLocked()
		return
	}
	h.idle = time.AfterFunc(h.hubs.Grace, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.clients == 0 && !h.closed && h.end == nil {
			h.closeLocked()
		}
	})
}

func (h *Hub) closeLocked() {
	h.closed = true
	go h.sess.Close() // the pump sees EOF and closes the connection
}

// input sends a client's keystrokes to the session.
func (h *Hub) input(p []byte) error {
	h.inMu.Lock()
	defer h.inMu.Unlock()
	_, err := h.stdin.Write(p)
	return err
}

// resize sets the session's window size: the latest client to ask wins, as in tmux.
func (h *Hub) resize(cols, rows int) {
	if cols <= 0 || cols > 1000 || rows <= 0 || rows > 1000 {
		return
	}
	h.mu.Lock()
	same := cols == h.cols && rows == h.rows
	h.cols, h.rows = cols, rows
	h.mu.Unlock()
	if !same {
		h.sess.WindowChange(rows, cols)
	}
}

// ttyRE is what a tmux client's terminal name must look like to reach a command line.
var ttyRE = regexp.MustCompile(`^/dev/pts/[0-9]+$`)

// refresh asks tmux to redraw the hub's whole screen (for a client that joined
// late or fell behind), in the background. One refresh is in flight at a
// time: asking again meanwhile is a no-op, as that one redraws for all.
func (h *Hub) refresh() {
	if !h.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer h.refreshing.Store(false)
		h.mu.Lock()
		tty := h.tty
		h.mu.Unlock()
		if !ttyRE.MatchString(tty) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := h.run(ctx, "tmux refresh-client -t "+tty); err != nil {
			h.hubs.logger().Debug("console refresh", "session", h.key, "err", err)
		}
	}()
}

// run runs a hub command in the VM on the hub's connection, waiting within
// ctx for one of the hub's command slots.
func (h *Hub) run(ctx context.Context, cmd string) ([]byte, error) {
	select {
	case h.cmds <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-h.cmds }()
	return h.conn.Run(ctx, cmd)
}
