package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Bounds on what a guest can make the daemon wait for or hold. The guest is
// untrusted: it may stop answering, or answer with endless output.
const (
	// MaxOutput caps each of a command's stdout and stderr kept by Run.
	MaxOutput = 1 << 20
	// RunTimeout bounds a Run whose context has no deadline of its own.
	RunTimeout = 5 * time.Minute
	// HandshakeTimeout bounds the TCP connect and the SSH handshake.
	HandshakeTimeout = 15 * time.Second
	// OpenTimeout bounds opening an SSH channel (one session).
	OpenTimeout = 15 * time.Second
	// KeepAlive is how often an idle connection is probed; a probe unanswered
	// within KeepAliveTimeout drops the connection (generous: an emulated
	// guest busy building an app still answers well within it).
	KeepAlive        = 15 * time.Second
	KeepAliveTimeout = 30 * time.Second
	// maxErrText caps the guest text quoted in an error.
	maxErrText = 512
)

// Client runs commands in one VM as root over SSH, with the daemon's key, and
// accepts only the VM's pinned host key. It keeps one connection and redials
// when it breaks. Every step has a deadline, and keepalives drop a connection
// to a guest that stopped answering.
type Client struct {
	Addr    string        // host:port, usually <vm-ip>:22
	Signer  ssh.Signer    // the daemon's key
	HostKey ssh.PublicKey // the VM's pinned host key
	// KeepAlive and KeepAliveTimeout override the defaults of the same names (tests).
	KeepAlive, KeepAliveTimeout time.Duration

	mu   sync.Mutex
	conn *ssh.Client
}

func (c *Client) dial(ctx context.Context) (*ssh.Client, error) {
	return c.dialWithin(ctx, HandshakeTimeout)
}

// dialWithin connects and shakes hands within limit, or, when limit is 0,
// within ctx's deadline alone (WaitReady: an emulated guest booting beside many
// others may take longer than HandshakeTimeout for its key exchange, and a
// handshake cut short and begun again would never finish).
func (c *Client) dialWithin(ctx context.Context, limit time.Duration) (*ssh.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, nil
	}
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyCallback: ssh.FixedHostKey(c.HostKey),
	}
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	var d net.Dialer
	tcp, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, err
	}
	// The handshake has no context of its own: bound it by ctx and a deadline.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(HandshakeTimeout)
	}
	tcp.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { tcp.SetDeadline(time.Now()) })
	sc, chans, reqs, err := ssh.NewClientConn(tcp, c.Addr, cfg)
	if !stop() || err != nil {
		tcp.Close()
		if err == nil {
			sc.Close()
			err = ctx.Err()
		}
		return nil, fmt.Errorf("ssh %s: handshake: %w", c.Addr, err)
	}
	tcp.SetDeadline(time.Time{})
	c.conn = ssh.NewClient(sc, chans, reqs)
	go c.keepAlive(c.conn)
	return c.conn, nil
}

// keepAlive probes conn while it lives and closes it when a probe goes
// unanswered: the guest's kernel may still ACK while its sshd is stopped, so
// TCP alone would never notice.
func (c *Client) keepAlive(conn *ssh.Client) {
	every, wait := c.KeepAlive, c.KeepAliveTimeout
	if every <= 0 {
		every = KeepAlive
	}
	if wait <= 0 {
		wait = KeepAliveTimeout
	}
	closed := make(chan struct{})
	go func() { conn.Wait(); close(closed) }()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-closed:
			return
		case <-t.C:
		}
		answered := make(chan error, 1)
		go func() {
			_, _, err := conn.SendRequest("keepalive@openssh.com", true, nil)
			answered <- err
		}()
		select {
		case err := <-answered:
			if err == nil {
				continue
			}
		case <-time.After(wait):
		case <-closed:
			return
		}
		c.drop(conn)
		return
	}
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
		_, err := c.dialWithin(ctx, 0) // the handshake may take all of ctx
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 15*time.Second)
			_, err = c.Run(actx, "true")
			cancel()
		}
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

// ErrOutputTooLarge is wrapped by Run's error for a command that printed more than MaxOutput.
var ErrOutputTooLarge = errors.New("output over the cap of " + strconv.Itoa(MaxOutput>>20) + " MiB")

// Run runs cmd in the VM and returns its stdout. A non-zero exit is an error that
// carries (the start of) the command's stderr. Each of stdout and stderr is
// capped at MaxOutput: a command printing more is killed and fails with
// ErrOutputTooLarge. Without a deadline in ctx, Run gives up after RunTimeout.
func (c *Client) Run(ctx context.Context, cmd string) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, RunTimeout)
		defer cancel()
	}
	sess, err := c.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", cmd, err)
	}
	defer sess.Close()
	over := make(chan struct{})
	var once sync.Once
	full := func() { once.Do(func() { close(over) }) }
	stdout := &capped{max: MaxOutput, full: full}
	stderr := &capped{max: MaxOutput, full: full}
	sess.Stdout, sess.Stderr = stdout, stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err := <-done:
		if stdout.over || stderr.over {
			return nil, fmt.Errorf("%q: %w", cmd, ErrOutputTooLarge)
		}
		if err != nil {
			return stdout.buf.Bytes(), fmt.Errorf("%q: %w: %s", cmd, err, Truncate(stderr.buf.Bytes(), maxErrText))
		}
		return stdout.buf.Bytes(), nil
	case <-over:
		sess.Signal(ssh.SIGKILL)
		return nil, fmt.Errorf("%q: %w", cmd, ErrOutputTooLarge)
	case <-ctx.Done():
		// The command alone is given up: other sessions may share the
		// connection, and keepalives find out whether the guest still answers.
		sess.Signal(ssh.SIGKILL)
		return nil, fmt.Errorf("%q: %w", cmd, ctx.Err())
	}
}

// capped keeps the first max bytes written to it and discards the rest
// (reading on, so the channel never stalls), calling full once it overflows.
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
	full func()
}

func (w *capped) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:max(room, 0)])
		w.over = true
		w.full()
		return len(p), nil
	}
	return w.buf.Write(p)
}

// Truncate returns guest text fit for an error or a log line: at most n bytes
// of it, trimmed, with anything but printable ASCII escaped.
func Truncate(p []byte, n int) string {
	p = bytes.TrimSpace(p)
	cut := len(p) > n
	if cut {
		p = p[:n]
	}
	q := strconv.QuoteToASCII(string(p))
	q = q[1 : len(q)-1]
	if cut {
		q += "…"
	}
	return q
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
// interactive use with a PTY; the caller closes it. Opening is bounded by ctx
// and OpenTimeout.
func (c *Client) Session(ctx context.Context) (*ssh.Session, error) {
	return c.open(ctx)
}

// open opens a session channel, bounded by ctx and OpenTimeout. A channel the
// guest refuses (sshd's MaxSessions, say) leaves the connection as it is, for
// the other sessions on it; a broken or unanswering connection is dropped, so
// the next call redials.
func (c *Client) open(ctx context.Context) (*ssh.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	type result struct {
		s   *ssh.Session
		err error
	}
	got := make(chan result, 1)
	go func() {
		s, err := conn.NewSession()
		got <- result{s, err}
	}()
	select {
	case r := <-got:
		var refused *ssh.OpenChannelError
		if r.err != nil && !errors.As(r.err, &refused) {
			c.drop(conn)
		}
		return r.s, r.err
	case <-ctx.Done():
		c.drop(conn) // unblocks NewSession
		return nil, fmt.Errorf("open a session: %w", ctx.Err())
	}
}
