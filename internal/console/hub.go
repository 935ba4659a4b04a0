package console

import (
	"bytes"
	"context"
	"errors"
	"io"
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
