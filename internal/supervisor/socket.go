package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/release"
)

// Request is one line a client sends on the socket.
type Request struct {
	Op   string       `json:"op"` // activate, restart, ps
	Spec release.Spec `json:"spec,omitempty"`
}

// Reply is one line back: progress (Out), then a last line with Done set.
type Reply struct {
	Out   string        `json:"out,omitempty"`
	Done  bool          `json:"done,omitempty"`
	Error string        `json:"error,omitempty"`
	Tail  []string      `json:"tail,omitempty"` // the failed release's last output lines
	PS    []api.Process `json:"ps,omitempty"`
}

func (s *Supervisor) serveSocket(ctx context.Context) error {
	os.MkdirAll(filepath.Dir(release.SocketPath), 0o700)
	os.Remove(release.SocketPath)
	ln, err := net.Listen("unix", release.SocketPath)
	if err != nil {
		return err
	}
	os.Chmod(release.SocketPath, 0o600)
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go s.handle(ctx, c)
	}
}

func (s *Supervisor) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	var req Request
	line, err := br.ReadBytes('\n')
	if err != nil {
		return
	}
	var mu sync.Mutex
	enc := json.NewEncoder(c)
	send := func(r Reply) {
		mu.Lock()
		enc.Encode(r)
		mu.Unlock()
	}
	if err := json.Unmarshal(line, &req); err != nil {
		send(Reply{Done: true, Error: "bad request: " + err.Error()})
		return
	}
	// The client going away cancels what it asked for.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, br)
		cancel()
	}()
	out := func(l string) { send(Reply{Out: l}) }
	var opErr error
	reply := Reply{Done: true}
	switch req.Op {
	case "activate":
		opErr = s.Activate(ctx, req.Spec, out)
	case "restart":
		opErr = s.Restart(ctx, out)
	case "ps":
		reply.PS = s.PS()
	default:
		opErr = fmt.Errorf("unknown op %q", req.Op)
	}
	if opErr != nil {
		reply.Error = opErr.Error()
		var he *HealthError
		if errors.As(opErr, &he) {
			reply.Tail = he.Tail
		}
	}
	send(reply)
}

// Call sends req to the supervisor and passes progress lines to out; the last
// reply is returned. Closing ctx cancels the operation.
func Call(ctx context.Context, req Request, out func(string)) (*Reply, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", release.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("the app supervisor is not running: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(c)
	for {
		var r Reply
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("the app supervisor hung up: %w", err)
		}
		if r.Done {
			return &r, nil
		}
		if out != nil {
			out(r.Out)
		}
	}
}
