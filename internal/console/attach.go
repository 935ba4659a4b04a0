package console

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"
)

// Control is a text frame on the attach WebSocket. The daemon sends hello first
// (the output stream's name and the offset the client starts at) and exit when
// the session's shell has ended; the client sends resize, refresh (redraw the
// screen) and detach (leaving on purpose).
type Control struct {
	Type   string `json:"type"`
	Cols   int    `json:"cols,omitempty"`
	Rows   int    `json:"rows,omitempty"`
	Status int    `json:"status,omitempty"`
	Stream string `json:"stream,omitempty"`
	Offset int64  `json:"offset,omitempty"`
}

// Opener opens an SSH session to the VM (guest.Client).
type Opener interface {
	Session(ctx context.Context) (*ssh.Session, error)
}

// AttachOptions are a client's terminal size and, when it reconnects, where its
// output stopped: the stream named in the last hello and the bytes it got since.
type AttachOptions struct {
	Cols, Rows int
	Stream     string
	Since      int64
}

// A client may send ControlRate control frames a second on average, in bursts
// of up to ControlBurst; frames beyond that are dropped.
const (
	ControlRate  = 20
	ControlBurst = 40
)

// ParseControl parses a control frame from a client; ok is false for anything
// but a well-formed resize (with a size within 1..1000), refresh or detach.
func ParseControl(data []byte) (c Control, ok bool) {
	if len(data) > 512 || json.Unmarshal(data, &c) != nil {
		return Control{}, false
	}
	switch c.Type {
	case "resize":
		if c.Cols < 1 || c.Cols > 1000 || c.Rows < 1 || c.Rows > 1000 {
			return Control{}, false
		}
		return Control{Type: c.Type, Cols: c.Cols, Rows: c.Rows}, true
	case "refresh", "detach":
		return Control{Type: c.Type}, true
	}
	return Control{}, false
}

// bucket is a token bucket: rate tokens a second, up to burst.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newBucket(rate, burst int) *bucket {
	return &bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst)}
}

// take spends a token if there is one at time now.
func (b *bucket) take(now time.Time) bool {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// writeTimeout bounds one frame to a client; a client that stalls longer is cut off.
const writeTimeout = 30 * time.Second

// Attach bridges ws to session id (key names it among all VMs' sessions),
// starting the session's hub with dial if it has none. It returns when the
// client leaves (the session stays) or the session ends (the client is told).
func (hs *Hubs) Attach(ctx context.Context, ws *websocket.Conn, key, id string, dial func() (Conn, error), o AttachOptions) error {
	if err := Validate(id); err != nil {
		return err
	}
	if o.Cols <= 0 || o.Cols > 1000 {
		o.Cols = 80
	}
	if o.Rows <= 0 || o.Rows > 1000 {
		o.Rows = 24
	}
	h, fresh, err := hs.join(ctx, key, id, dial, o.Cols, o.Rows)
	if err != nil {
		return err
	}
	var detached, left atomic.Bool
	defer func() { h.leave(detached.Load()) }()

	// Where this client starts: at the beginning for the hub's first client; for
	// a reconnect whose missed output is still held, where it left off (nothing
	// lost); otherwise now, with a redraw. Other clients' history is not
	// replayed: it holds tmux's terminal queries, which a second terminal would
	// answer into the shell.
	h.mu.Lock()
	var cursor int64
	redraw := false
	switch {
	case fresh:
	case o.Stream == h.stream && h.out.holds(o.Since):
		cursor = o.Since
	default:
		cursor, redraw = h.out.total, true
	}
	hello, _ := json.Marshal(Control{Type: "hello", Stream: h.stream, Offset: cursor})
	h.mu.Unlock()
	if err := ws.Write(ctx, websocket.MessageText, hello); err != nil {
		return nil
	}
	if !fresh {
		h.mu.Lock()
		resized := o.Cols != h.cols || o.Rows != h.rows
		h.mu.Unlock()
		if resized {
			h.resize(o.Cols, o.Rows) // tmux redraws
		} else if redraw {
			h.refresh()
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bucket := newBucket(ControlRate, ControlBurst)
	go func() { // client -> VM
		defer func() {
			cancel()
			left.Store(true)
			h.mu.Lock()
			h.changed.Broadcast()
			h.mu.Unlock()
		}()
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if h.input(data) != nil {
					return
				}
				continue
			}
			if !bucket.take(time.Now()) {
				continue // over the rate: dropped, the client stays
			}
			c, ok := ParseControl(data)
			if !ok {
				continue
			}
			switch c.Type {
			case "resize":
				h.resize(c.Cols, c.Rows)
			case "refresh":
				h.refresh()
			case "detach": // the client's close follows
				detached.Store(true)
			}
		}
	}()

	// VM -> client, at the client's own pace.
	buf := make([]byte, 16<<10)
	for {
		h.mu.Lock()
		for cursor == h.out.total && h.end == nil && !left.Load() {
			h.changed.Wait()
		}
		if left.Load() {
			h.mu.Unlock()
			return nil
		}
		skipped := false
		if !h.out.holds(cursor) { // fell more than the ring behind
			cursor, skipped = h.out.total, true
		}
		n := h.out.read(cursor, buf)
		end := h.end
		h.mu.Unlock()
		if skipped {
			// CAN aborts any escape sequence cut in half; then a full redraw.
			if write(ctx, ws, websocket.MessageBinary, []byte{0x18}) != nil {
				return nil
			}
			h.refresh()
		}
		if n > 0 {
			if write(ctx, ws, websocket.MessageBinary, buf[:n]) != nil {
				return nil
			}
			cursor += int64(n)
			continue
		}
		if end != nil {
			if end.ended {
				msg, _ := json.Marshal(Control{Type: "exit", Status: end.status})
				write(ctx, ws, websocket.MessageText, msg)
				ws.Close(websocket.StatusNormalClosure, "session ended")
			} else {
				ws.Close(websocket.StatusGoingAway, end.reason)
			}
			return nil
		}
	}
}

func write(ctx context.Context, ws *websocket.Conn, typ websocket.MessageType, p []byte) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return ws.Write(ctx, typ, p)
}
