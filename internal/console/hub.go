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
	"strings"
	"sync"
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
// ring buffer that every attached WebSocket reads at its own pace.
type Hubs struct {
	// Grace is how long a hub outlives a last client that dropped without
	// detaching, so that a reconnect resumes without losing output.
	Grace time.Duration
	Log   *slog.Logger

	mu sync.Mutex
	m  map[string]*Hub
}

// Hub is one session's live tmux client in the VM, shared by its attached clients.
type Hub struct {
	hubs   *Hubs
	key    string
	id     string
	stream string // names this hub's output stream in hello messages
	conn   Conn
	sess   *ssh.Session
	stdin  io.Writer
	inMu   sync.Mutex // one client's keystrokes at a time

	mu      sync.Mutex
	changed *sync.Cond // output, an end, or a client leaving
	out     ring
	tty     string // the tmux client's terminal in the VM, for refresh-client
	clients int
	cols    int
	rows    int
	end     *ending
	closed  bool // closed on purpose (idle): not an end of the session
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
func (hs *Hubs) Attached(key string) (clients int, hub bool) {
	hs.mu.Lock()
	h := hs.m[key]
	hs.mu.Unlock()
	if h == nil {
		return 0, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients, true
}

func (hs *Hubs) logger() *slog.Logger {
	if hs.Log != nil {
		return hs.Log
	}
	return slog.New(slog.DiscardHandler)
}

// join returns the live hub for key with a client counted in, starting one
// (dial gives it its connection) if there is none. fresh says it was started.
func (hs *Hubs) join(ctx context.Context, key, id string, dial func() (Conn, error), cols, rows int) (h *Hub, fresh bool, err error) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if h := hs.m[key]; h != nil {
		h.mu.Lock()
		live := !h.closed && h.end == nil
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
	}
	conn, err := dial()
	if err != nil {
		return nil, false, err
	}
	h, err = startHub(ctx, hs, conn, key, id, cols, rows)
	if err != nil {
		conn.Close()
		return nil, false, err
	}
	h.clients = 1
	if hs.m == nil {
		hs.m = map[string]*Hub{}
	}
	hs.m[key] = h
	return h, true, nil
}

func (hs *Hubs) remove(h *Hub) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.m[h.key] == h {
		delete(hs.m, h.key)
	}
}

func startHub(ctx context.Context, hs *Hubs, conn Conn, key, id string, cols, rows int) (*Hub, error) {
	sess, err := conn.Session(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", id, err)
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty("xterm-256color", rows, cols, modes); err != nil {
		sess.Close()
		return nil, fmt.Errorf("attach %s: pty: %w", id, err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	sess.Stderr = sess.Stdout
	// The first line is the PTY's name: with it the hub can ask tmux to redraw
	// this client's screen for a client that joins late.
	if err := sess.Start("cd ~ && tty && exec tmux new-session -A -s " + id); err != nil {
		sess.Close()
		return nil, fmt.Errorf("attach %s: %w", id, err)
	}
	var sid [6]byte
	rand.Read(sid[:])
	h := &Hub{hubs: hs, key: key, id: id, stream: hex.EncodeToString(sid[:]), conn: conn, sess: sess,
		stdin: stdin, out: newRing(RingSize), cols: cols, rows: rows}
	h.changed = sync.NewCond(&h.mu)
	go h.pump(stdout)
	return h, nil
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
			if i >= 0 && bytes.HasPrefix(first, []byte("/dev/")) {
				h.mu.Lock()
				h.tty = strings.TrimSpace(string(first[:i]))
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
	closed := h.closed
	h.mu.Unlock()
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
	_, err = h.conn.Run(ctx, "tmux has-session -t ="+h.id)
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

// refresh asks tmux to redraw the hub's whole screen (for a client that joined
// late or fell behind).
func (h *Hub) refresh() {
	h.mu.Lock()
	tty := h.tty
	h.mu.Unlock()
	if tty == "" || strings.ContainsAny(tty, " ;'\"$`\\") {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.conn.Run(ctx, "tmux refresh-client -t "+tty); err != nil {
		h.hubs.logger().Debug("console refresh", "session", h.key, "err", err)
	}
}
