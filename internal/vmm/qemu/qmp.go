package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP runs one command on a QMP socket and decodes its result into result (nil
// to ignore it).
func QMP(ctx context.Context, socket, command string, arguments, result any) error {
	return qmp(ctx, socket, command, arguments, result)
}

// qmp runs one command on a VM's QMP socket: connect, read the greeting,
// negotiate capabilities, execute, and return the "return" value. A connection
// per command keeps no state between calls (QMP serves one client at a time).
func qmp(ctx context.Context, socket, command string, arguments any, result any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	r := bufio.NewReader(conn)
	if _, err := readReply(r); err != nil { // greeting
		return fmt.Errorf("qmp %s: greeting: %w", command, err)
	}
	for _, cmd := range []struct {
		name string
		args any
	}{{"qmp_capabilities", nil}, {command, arguments}} {
		req := map[string]any{"execute": cmd.name}
		if cmd.args != nil {
			req["arguments"] = cmd.args
		}
		data, _ := json.Marshal(req)
		if _, err := conn.Write(append(data, '\n')); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd.name, err)
		}
		reply, err := readReply(r)
		if err != nil {
			return fmt.Errorf("qmp %s: %w", cmd.name, err)
		}
		if reply.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd.name, reply.Error.Class, reply.Error.Desc)
		}
		if cmd.name == command && result != nil && reply.Return != nil {
			if err := json.Unmarshal(reply.Return, result); err != nil {
				return fmt.Errorf("qmp %s: %w", command, err)
			}
		}
	}
	return nil
}

type qmpReply struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// readReply returns the next greeting, return or error, skipping events.
func readReply(r *bufio.Reader) (*qmpReply, error) {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var rep qmpReply
		if err := json.Unmarshal(line, &rep); err != nil {
			return nil, fmt.Errorf("bad reply %q: %w", line, err)
		}
		if rep.Event == "" {
			return &rep, nil
		}
	}
}
