package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// qmpSession is one connection to QEMU's QMP socket, for commands that hand
// over a file descriptor (it belongs to the monitor that received it) and
// watch a migration.
type qmpSession struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// dialQMP connects and negotiates capabilities; the session ends at ctx's deadline.
func dialQMP(ctx context.Context, socket string) (*qmpSession, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("QMP: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	s := &qmpSession{conn: c.(*net.UnixConn), r: bufio.NewReader(c)}
	if _, err := readQMP(s.r, false); err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if _, err := s.exec("qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func (s *qmpSession) close() { s.conn.Close() }

// exec runs a command; f, when not nil, goes along (SCM_RIGHTS).
func (s *qmpSession) exec(cmd string, args any, f *os.File) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	data, _ := json.Marshal(req)
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := s.conn.WriteMsgUnix(append(data, '\n'), oob, nil); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	m, err := readQMP(s.r, true)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	return m.Return, nil
}

// migrate sends QEMU's state to f.
func (s *qmpSession) migrate(ctx context.Context, f *os.File) error {
	// QEMU 7.2 limits a migration to 128 MiB/s by default.
	if _, err := s.exec("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if _, err := s.exec("getfd", map[string]any{"fdname": "snapshot"}, f); err != nil {
		return err
	}
	if _, err := s.exec("migrate", map[string]any{"uri": "fd:snapshot"}, nil); err != nil {
		return err
	}
	return s.waitMigration(ctx)
}

// incoming loads QEMU's state from f (QEMU started with -incoming defer).
func (s *qmpSession) incoming(ctx context.Context, f *os.File) error {
	if _, err := s.exec("getfd", map[string]any{"fdname": "snapshot"}, f); err != nil {
		return err
	}
	if _, err := s.exec("migrate-incoming", map[string]any{"uri": "fd:snapshot"}, nil); err != nil {
		return err
	}
	return s.waitMigration(ctx)
}

// waitMigration polls query-migrate until the migration has completed or failed.
func (s *qmpSession) waitMigration(ctx context.Context) error {
	poll := time.Millisecond
	for {
		ret, err := s.exec("query-migrate", nil, nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(ret, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if st.ErrorDesc == "" {
				st.ErrorDesc = "see QEMU's output"
			}
			return fmt.Errorf("QEMU's migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return errors.New("QEMU's migration did not end in time")
		case <-time.After(poll):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}
