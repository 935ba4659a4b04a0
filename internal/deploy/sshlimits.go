package deploy

import (
	"net"
	"sync"
	"time"
)

// Limits on git's SSH handshakes, the work anyone on the network can make the
// daemon do before authenticating: beyond them a new connection is closed at
// once.
const (
	DefaultSSHHandshakes      = 64               // in progress at once
	DefaultSSHHandshakesPerIP = 8                // in progress at once from one address
	SSHHandshakeTimeout       = 30 * time.Second // the most one may take
)

// startHandshake counts a handshake from addr in, or says (false) that there
// are as many in progress, from addr or in all, as the limits allow. The
// returned func counts it out (idempotent).
func (s *Service) startHandshake(addr net.Addr) (func(), bool) {
	total, perIP := s.Git.SSHHandshakes, s.Git.SSHHandshakesPerIP
	if total <= 0 {
		total = DefaultSSHHandshakes
	}
	if perIP <= 0 {
		perIP = DefaultSSHHandshakesPerIP
	}
	ip := addr.String()
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if s.handshakes >= total || s.perIP[ip] >= perIP {
		s.Log.Debug("git ssh: too many handshakes, connection closed", "remote", addr, "from it", s.perIP[ip], "in all", s.handshakes)
		return nil, false
	}
	if s.perIP == nil {
		s.perIP = map[string]int{}
	}
	s.handshakes++
	s.perIP[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.gmu.Lock()
			defer s.gmu.Unlock()
			s.handshakes--
			if s.perIP[ip]--; s.perIP[ip] <= 0 {
				delete(s.perIP, ip)
			}
		})
	}, true
}
