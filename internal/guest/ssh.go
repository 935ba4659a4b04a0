package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Client runs commands in one VM as root over SSH, with the daemon's key, and
// accepts only the VM's pinned host key. It keeps one connection and redials
// when it breaks.
type Client struct {
	Addr    string        // host:port, usually <vm-ip>:22
	Signer  ssh.Signer    // the daemon's key
	HostKey ssh.PublicKey // the VM's pinned host key

	mu   sync.Mutex
	conn *ssh.Client
}

func (c *Client) dial(ctx context.Context) (*ssh.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, nil
	}
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyCallback: ssh.FixedHostKey(c.HostKey),
		Timeout:         10 * time.Second,
	}
	var d net.Dialer
	tcp, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, err
	}
	// The handshake has no context of its own: bound it by ctx.
	stop := context.AfterFunc(ctx, func() { tcp.SetDeadline(time.Now()) })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(tcp, c.Addr, cfg)
	if err != nil {
		tcp.Close()
		return nil, err
	}
	c.conn = ssh.NewClient(sc, chans, reqs)
	return c.conn, nil
}

func (c *Client) drop(conn *ssh.Client) {
	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
	}
	c.mu.Unlock()
	conn.Close()
}

// WaitReady returns once the VM's sshd accepts the daemon's key and runs a
// command, retrying until ctx ends; the error then says what failed last.
func (c *Client) WaitReady(ctx context.Context) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := c.Run(actx, "true")
		cancel()
		if err == nil {
			return nil
		}
		last = err
		var ke *ssh.ExitError
		if errors.As(err, &ke) || isKeyMismatch(err) {
			return fmt.Errorf("ssh %s: %w", c.Addr, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ssh %s not ready: %w (last error: %v)", c.Addr, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func isKeyMismatch(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("host key mismatch"))
}

// Run runs cmd in the VM and returns its stdout. A non-zero exit is an error that
// carries the command's stderr.
func (c *Client) Run(ctx context.Context, cmd string) ([]byte, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	sess, err := conn.NewSession()
	if err != nil {
		c.drop(conn) // a broken connection: the next call redials
		return nil, err
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.Bytes(), fmt.Errorf("%q: %w: %s", cmd, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return stdout.Bytes(), nil
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		c.drop(conn)
		return nil, fmt.Errorf("%q: %w", cmd, ctx.Err())
	}
}

// Close closes the connection, if any.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

// Session opens a new SSH session on the (possibly new) connection, for
// interactive use with a PTY; the caller closes it.
func (c *Client) Session(ctx context.Context) (*ssh.Session, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	s, err := conn.NewSession()
	if err != nil {
		c.drop(conn)
		return nil, err
	}
	return s, nil
}
