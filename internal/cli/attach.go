package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/console"
	"golang.org/x/term"
)

const detachKey = 0x1d // Ctrl+]

// errDetached and errEnded say how an attachment finished.
var (
	errDetached = errors.New("detached")
	errEnded    = errors.New("session ended")
)

// attach connects the terminal to session id of vm until the user detaches
// (Ctrl+]) or the shell exits. A dropped connection is retried with backoff.
func attach(ctx context.Context, c *client.Client, vm, id string, stdout io.Writer) error {
	stdinFd := int(os.Stdin.Fd())
	if term.IsTerminal(stdinFd) {
		old, err := term.MakeRaw(stdinFd)
		if err != nil {
			return fmt.Errorf("raw terminal: %w", err)
		}
		defer term.Restore(stdinFd, old)
		// Restore on signals too: the defers run when attach returns.
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sigs)
		go func() {
			if _, ok := <-sigs; ok {
				term.Restore(stdinFd, old)
				os.Exit(1)
			}
		}()
	}
	keys := make(chan []byte, 16)
	go func() { // one reader of stdin for every connection attempt
		buf := make([]byte, 4096)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				keys <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				close(keys)
				return
			}
		}
	}()
	var pos position
	backoff := 500 * time.Millisecond
	lost := time.Time{}
	for {
		err := attachOnce(ctx, c, vm, id, stdout, keys, &pos, !lost.IsZero())
		switch {
		case errors.Is(err, errDetached):
			fmt.Fprintf(stdout, "\r\nDetached from %s. Reconnect with: fcm console %s -s %s\r\n", id, vm, id)
			return nil
		case errors.Is(err, errEnded):
			fmt.Fprintf(stdout, "\r\nSession %s ended.\r\n", id)
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) || ctx.Err() != nil {
			return err
		}
		if pos.connected { // it had worked: a fresh budget of retries
			lost, backoff = time.Now(), 500*time.Millisecond
		} else if lost.IsZero() {
			lost = time.Now()
		}
		if time.Since(lost) > reconnectFor {
			return fmt.Errorf("connection to session %s lost for %s (%v); reattach with: fcm console %s -s %s",
				id, reconnectFor, err, vm, id)
		}
		fmt.Fprintf(stdout, "\r\nConnection lost (%v); reconnecting in %s...\r\n", err, backoff)
		time.Sleep(backoff)
		backoff = min(2*backoff, 8*time.Second)
	}
}

// reconnectFor is how long a dropped console keeps trying to reconnect.
const reconnectFor = 2 * time.Minute

// position is where the terminal's output stands in the daemon's stream of the
// session, so a reconnect resumes without losing or repeating output.
type position struct {
	stream    string
	offset    int64
	connected bool // the last attempt got as far as the daemon's hello
}

func attachOnce(ctx context.Context, c *client.Client, vm, id string, stdout io.Writer, keys <-chan []byte, pos *position, again bool) error {
	pos.connected = false
	cols, rows, err := term.GetSize(int(os.Stdout.Fd()))
	if err != nil {
		cols, rows = 80, 24
	}
	q := url.Values{"cols": {strconv.Itoa(cols)}, "rows": {strconv.Itoa(rows)}}
	if pos.stream != "" {
		q.Set("stream", pos.stream)
		q.Set("since", strconv.FormatInt(pos.offset, 10))
	}
	u := strings.Replace(c.Host, "http", "ws", 1) + "/v1/vms/" + url.PathEscape(vm) + "/sessions/" + url.PathEscape(id) +
		"/attach?" + q.Encode()
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.Token}},
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			var ae api.Error
			body, _ := io.ReadAll(resp.Body)
			if json.Unmarshal(body, &ae) == nil && ae.Message != "" {
				return &ae
			}
			return &api.Error{Message: fmt.Sprintf("attach: %s", resp.Status), Code: api.CodeInternal}
		}
		return err
	}
	ws.SetReadLimit(1 << 20)
	defer ws.CloseNow()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	result := make(chan error, 2)
	var detaching atomic.Bool
	readerDone := make(chan struct{})
	go func() { // VM -> terminal
		defer close(readerDone)
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil && detaching.Load() {
				result <- errDetached
				return
			}
			if err != nil {
				if websocket.CloseStatus(err) == websocket.StatusGoingAway {
					var ce websocket.CloseError
					if errors.As(err, &ce) && ce.Reason != "" {
						err = errors.New(ce.Reason)
					}
				}
				result <- err
				return
			}
			if typ == websocket.MessageBinary {
				stdout.Write(data)
				pos.offset += int64(len(data))
				continue
			}
			var m console.Control
			if json.Unmarshal(data, &m) != nil {
				continue
			}
			switch m.Type {
			case "hello":
				pos.stream, pos.offset, pos.connected = m.Stream, m.Offset, true
				if again {
					// What was missed is replayed; then a clean screen, since
					// this side printed over it.
					fmt.Fprint(stdout, "Reconnected.\r\n")
					msg, _ := json.Marshal(console.Control{Type: "refresh"})
					ws.Write(ctx, websocket.MessageText, msg)
				}
			case "exit":
				result <- errEnded
				return
			}
		}
	}()
	go func() { // terminal -> VM
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
				if c, r, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
					msg, _ := json.Marshal(console.Control{Type: "resize", Cols: c, Rows: r})
					ws.Write(ctx, websocket.MessageText, msg)
				}
			case k, ok := <-keys:
				i := bytes.IndexByte(k, detachKey)
				if !ok || i >= 0 { // Ctrl+], or stdin closed: detach
					if i > 0 {
						ws.Write(ctx, websocket.MessageBinary, k[:i])
					}
					// The reader's error from the close must not be taken for a
					// dropped connection.
					detaching.Store(true)
					msg, _ := json.Marshal(console.Control{Type: "detach"})
					ws.Write(ctx, websocket.MessageText, msg)
					ws.Close(websocket.StatusNormalClosure, "detached")
					result <- errDetached
					return
				}
				if err := ws.Write(ctx, websocket.MessageBinary, k); err != nil {
					result <- err
					return
				}
			}
		}
	}()
	err = <-result
	cancel()
	ws.CloseNow()
	<-readerDone // pos is settled
	return err
}
