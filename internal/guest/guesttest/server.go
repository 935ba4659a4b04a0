// Package guesttest runs a real SSH server in the test process, standing in for
// a guest's sshd: commands are Go functions, and the server can be told to
// refuse channels past a limit (sshd's MaxSessions) or to stop answering
// altogether (a guest whose sshd was SIGSTOPped).
package guesttest

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Exec runs one command: its stdin and output are ch (stderr is ch.Stderr());
// pty says a PTY was requested. It returns the exit status.
type Exec func(cmd string, ch ssh.Channel, pty bool) uint32

// Server is an SSH server on 127.0.0.1.
type Server struct {
	Addr    string
	HostKey ssh.PublicKey
	Signer  ssh.Signer // a client key it accepts
	// MaxSessions refuses a session channel while that many are open (0: no limit).
	MaxSessions int
	// Stalled, once set, leaves channel opens and keepalives unanswered.
	Stalled atomic.Bool

	exec      Exec
	mu        sync.Mutex
	open      int
	maxOpen   int
	opened    int
	refused   int
	execs     map[string]int
	listener  net.Listener
	conns     []net.Conn
	closeOnce sync.Once
}

// Start runs a server answering commands with exec until the test ends.
func Start(t testing.TB, exec Exec) *Server {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	host, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	_, clientPriv, _ := ed25519.GenerateKey(rand.Reader)
	client, _ := ssh.NewSignerFromKey(clientPriv)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		return nil, nil
	}}
	cfg.AddHostKey(host)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), HostKey: host.PublicKey(), Signer: client, exec: exec, execs: map[string]int{}, listener: l}
	t.Cleanup(s.Close)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go s.serve(c, cfg)
		}
	}()
	return s
}

// Close stops the server and drops its connections.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.listener.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			c.Close()
		}
	})
}

// Stats says how many session channels were opened (and refused) in all, and
// the most open at once.
func (s *Server) Stats() (opened, refused, maxOpen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened, s.refused, s.maxOpen
}

// Execs says how many commands starting with prefix were run.
func (s *Server) Execs(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for cmd, k := range s.execs {
		if len(cmd) >= len(prefix) && cmd[:len(prefix)] == prefix {
			n += k
		}
	}
	return n
}

func (s *Server) serve(c net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	go func() {
		for r := range reqs {
			if s.Stalled.Load() {
				continue // never answered
			}
			if r.WantReply {
				r.Reply(r.Type == "keepalive@openssh.com", nil)
			}
		}
	}()
	for nc := range chans {
		if s.Stalled.Load() {
			continue // never answered
		}
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		s.mu.Lock()
		if s.MaxSessions > 0 && s.open >= s.MaxSessions {
			s.refused++
			s.mu.Unlock()
			nc.Reject(ssh.Prohibited, "open failed")
			continue
		}
		s.open++
		s.opened++
		s.maxOpen = max(s.maxOpen, s.open)
		s.mu.Unlock()
		ch, creqs, err := nc.Accept()
		if err != nil {
			s.closed()
			continue
		}
		go s.session(ch, creqs)
	}
}

func (s *Server) closed() {
	s.mu.Lock()
	s.open--
	s.mu.Unlock()
}

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer s.closed()
	defer ch.Close()
	pty := false
	for r := range reqs {
		switch r.Type {
		case "pty-req":
			pty = true
			r.Reply(true, nil)
		case "exec":
			var p struct{ Cmd string }
			ssh.Unmarshal(r.Payload, &p)
			// Counted before the reply: a client whose exec has returned finds it counted.
			s.mu.Lock()
			s.execs[p.Cmd]++
			s.mu.Unlock()
			r.Reply(true, nil)
			go func() {
				// Requests after exec (window-change, signal) need no answer.
				for r := range reqs {
					if r.WantReply {
						r.Reply(false, nil)
					}
				}
			}()
			status := s.exec(p.Cmd, ch, pty)
			ch.CloseWrite()
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
			return
		default:
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
}

// Echo copies the channel's input back to it until the input ends (a shell
// that shows what is typed).
func Echo(ch ssh.Channel) { io.Copy(ch, ch) }
