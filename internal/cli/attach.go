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
	"strings"
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
	backoff := time.Second
	for attempt := 0; ; attempt++ {
		err := attachOnce(ctx, c, vm, id, stdout, keys)
		switch {
		case errors.Is(err, errDetached):
			fmt.Fprintf(stdout, "\r\nDetached from %s. Reconnect with: fcm console %s -s %s\r\n", id, vm, id)
			return nil
		case errors.Is(err, errEnded):
			fmt.Fprintf(stdout, "\r\nSession %s ended.\r\n", id)
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) || attempt >= 5 || ctx.Err() != nil {
			return err
		}
		fmt.Fprintf(stdout, "\r\nConnection lost (%v); reconnecting in %s...\r\n", err, backoff)
		time.Sleep(backoff)
		backoff *= 2
	}
}

func attachOnce(ctx context.Context, c *client.Client, vm, id string, stdout io.Writer, keys <-chan []byte) error {
	cols, rows, err := term.GetSize(int(os.Stdout.Fd()))
	if err != nil {
		cols, rows = 80, 24
	}
	u := strings.Replace(c.Host, "http", "ws", 1) + "/v1/vms/" + url.PathEscape(vm) + "/sessions/" + url.PathEscape(id) +
		fmt.Sprintf("/attach?cols=%d&rows=%d", cols, rows)
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
	go func() { // VM -> terminal
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				result <- err
				return
			}
			if typ == websocket.MessageBinary {
				stdout.Write(data)
				continue
			}
			var m console.Control
			if json.Unmarshal(data, &m) == nil && m.Type == "exit" {
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
				if !ok { // stdin closed: detach
					result <- errDetached
					ws.CloseNow() // the daemon treats any close as a detach
					return
				}
				if i := bytes.IndexByte(k, detachKey); i >= 0 {
					if i > 0 {
						ws.Write(ctx, websocket.MessageBinary, k[:i])
					}
					// Say so before closing: the reader's error from the close must not
					// be taken for a dropped connection.
					result <- errDetached
					ws.CloseNow() // the daemon treats any close as a detach
					return
				}
				if err := ws.Write(ctx, websocket.MessageBinary, k); err != nil {
					result <- err
					return
				}
			}
		}
	}()
	return <-result
}
