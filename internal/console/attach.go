package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"
)

// Control is a text frame on the attach WebSocket: the client sends resize,
// the daemon sends exit when the session's shell has ended.
type Control struct {
	Type   string `json:"type"` // "resize" or "exit"
	Cols   int    `json:"cols,omitempty"`
	Rows   int    `json:"rows,omitempty"`
	Status int    `json:"status,omitempty"`
}

// Opener opens an SSH session to the VM (guest.Client).
type Opener interface {
	Session(ctx context.Context) (*ssh.Session, error)
}

// Attach bridges ws to tmux session id in the VM: a PTY of cols x rows running
// `tmux new-session -A -s id`. Binary frames carry bytes both ways; text frames
// carry Control messages. It returns when either side ends; a client leaving
// only detaches (the tmux session stays), the shell exiting ends the session and
// the client is told with an exit message.
func Attach(ctx context.Context, ws *websocket.Conn, o Opener, id string, cols, rows int) error {
	if err := Validate(id); err != nil {
		return err
	}
	if cols <= 0 || cols > 1000 {
		cols = 80
	}
	if rows <= 0 || rows > 1000 {
		rows = 24
	}
	sess, err := o.Session(ctx)
	if err != nil {
		return fmt.Errorf("attach %s: %w", id, err)
	}
	defer sess.Close()
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty("xterm-256color", rows, cols, modes); err != nil {
		return fmt.Errorf("attach %s: pty: %w", id, err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return err
	}
	sess.Stderr = sess.Stdout
	if err := sess.Start("cd ~ && exec tmux new-session -A -s " + id); err != nil {
		return fmt.Errorf("attach %s: %w", id, err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// VM -> client.
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := stdout.Read(buf)
			if n > 0 {
				if werr := ws.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
					cancel()
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	// client -> VM.
	go func() {
		defer cancel()
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := stdin.Write(data); err != nil {
					return
				}
				continue
			}
			var c Control
			if json.Unmarshal(data, &c) == nil && c.Type == "resize" && c.Cols > 0 && c.Rows > 0 {
				sess.WindowChange(c.Rows, c.Cols)
			}
		}
	}()
	waitErr := make(chan error, 1)
	go func() { waitErr <- sess.Wait() }()
	select {
	case err := <-waitErr:
		<-outDone // everything the shell printed reaches the client first
		status := 0
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			status = ee.ExitStatus()
		} else if err != nil && !errors.Is(err, io.EOF) {
			status = -1
		}
		msg, _ := json.Marshal(Control{Type: "exit", Status: status})
		ws.Write(context.Background(), websocket.MessageText, msg)
		ws.Close(websocket.StatusNormalClosure, "session ended")
		return nil
	case <-ctx.Done():
		// The client went away (a detach or a dropped connection): closing the SSH
		// session detaches tmux's client; the session lives on.
		return nil
	}
}
