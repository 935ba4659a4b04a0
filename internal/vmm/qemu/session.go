package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// session is one QMP connection kept for several commands: a file
// descriptor handed over with getfd belongs to the monitor that received it,
// and a migration is watched while it runs.
type session struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// openSession connects to socket and negotiates capabilities; the session
// ends at ctx's deadline (or in a minute).
func openSession(ctx context.Context, socket string) (*session, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	c.SetDeadline(deadline)
	s := &session{conn: c.(*net.UnixConn), r: bufio.NewReader(c)}
	if _, err := readReply(s.r); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: greeting: %w", err)
	}
	if err := s.exec("qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func (s *session) close() { s.conn.Close() }

// exec runs one command, decoding its return value into result (nil: ignored).
func (s *session) exec(command string, arguments, result any) error {
	return s.execFD(command, arguments, result, nil)
}

// execFD is exec with f's descriptor sent alongside (SCM_RIGHTS), as getfd
// wants it.
func (s *session) execFD(command string, arguments, result any, f *os.File) error {
	req := map[string]any{"execute": command}
	if arguments != nil {
		req["arguments"] = arguments
	}
	data, _ := json.Marshal(req)
	data = append(data, '\n')
	var err error
	if f != nil {
		_, _, err = s.conn.WriteMsgUnix(data, unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = s.conn.Write(data)
	}
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	reply, err := readReply(s.r)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if reply.Error != nil {
		return fmt.Errorf("qmp %s: %s: %s", command, reply.Error.Class, reply.Error.Desc)
	}
	if result != nil && reply.Return != nil {
		if err := json.Unmarshal(reply.Return, result); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
	}
	return nil
}

// waitMigration polls query-migrate until the migration has completed (nil)
// or failed.
func (s *session) waitMigration(ctx context.Context) error {
	poll := time.Millisecond
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := s.exec("query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", st.Status, ctx.Err())
		case <-time.After(poll):
		}
		poll = min(2*poll, 10*time.Millisecond)
	}
}
