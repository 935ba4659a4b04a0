package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// liveSweep is how often live connections are checked against the store
// besides at once on every revocation the daemon itself makes: it bounds how
// long one outlives a revocation made another way (a web logout, an expiry).
const liveSweep = 2 * time.Second

// liveConns are the connections that outlive the request that authenticated
// them: console WebSockets and log follows. Each is recorded with its token
// and VM, and ended as soon as the token would no longer be let in (revoked,
// expired, its user removed or denied) or may no longer see the VM (destroyed,
// given to another owner).
type liveConns struct {
	mu      sync.Mutex
	m       map[*liveConn]struct{}
	running bool // a sweeper goroutine runs while m is not empty
}

type liveConn struct {
	tok  *store.Token
	vmID string
	end  func(reason string)
	once sync.Once
}

// track records a live connection of tok to the VM vmID; end is called once,
// with why, when it must end. The returned func forgets it (call it when the
// connection ends of itself).
func (s *Server) track(tok *store.Token, vmID string, end func(reason string)) (forget func()) {
	l := &s.live
	c := &liveConn{tok: tok, vmID: vmID, end: end}
	l.mu.Lock()
	if l.m == nil {
		l.m = map[*liveConn]struct{}{}
	}
	l.m[c] = struct{}{}
	if !l.running {
		l.running = true
		go s.sweepLoop()
	}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.m, c)
		l.mu.Unlock()
	}
}

// sweepLoop checks the live connections every liveSweep until there are none.
func (s *Server) sweepLoop() {
	t := time.NewTicker(liveSweep)
	defer t.Stop()
	for range t.C {
		s.endRevoked()
		l := &s.live
		l.mu.Lock()
		if len(l.m) == 0 {
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
}

// endRevoked ends every live connection whose token is no longer valid or
// whose VM its token may no longer see, and returns how many it ended. The
// handlers that revoke call it at once.
func (s *Server) endRevoked() int {
	l := &s.live
	l.mu.Lock()
	conns := make([]*liveConn, 0, len(l.m))
	for c := range l.m {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	if len(conns) == 0 {
		return 0
	}
	var ended []*liveConn
	var reasons []string
	err := s.Store.View(func(tx *store.Tx) error {
		for _, c := range conns {
			if why := stillAllowed(tx, c); why != "" {
				ended = append(ended, c)
				reasons = append(reasons, why)
			}
		}
		return nil
	})
	if err != nil {
		s.logger().Warn("check live connections", "err", err)
		return 0
	}
	for i, c := range ended {
		l.mu.Lock()
		delete(l.m, c)
		l.mu.Unlock()
		s.logger().Info("live connection ended", "token", c.tok.ID, "vm_id", c.vmID, "why", reasons[i])
		c.once.Do(func() { c.end(reasons[i]) })
	}
	return len(ended)
}

// stillAllowed says why c must end ("" when it may go on).
func stillAllowed(tx *store.Tx, c *liveConn) string {
	cur, err := tx.TokenByID(c.tok.ID)
	switch {
	case err != nil || cur.User != c.tok.User || cur.Admin != c.tok.Admin:
		return "access revoked: the token was revoked"
	case !cur.ExpiresAt.IsZero() && time.Now().After(cur.ExpiresAt):
		return "access revoked: the token expired"
	}
	if cur.User != "" {
		u, err := tx.User(cur.User)
		if err != nil {
			return "access revoked: the user was removed"
		}
		if ok, err := tx.Allowed(u.Email); err == nil && !ok {
			return "access revoked: the user may no longer use this host"
		}
	}
	if c.vmID != "" {
		v, err := tx.VMByID(c.vmID)
		if err != nil {
			return "the VM is gone"
		}
		if !visible(cur, v) {
			return "the VM changed hands"
		}
	}
	return ""
}

// liveContext is ctx ended, with the connection, when tok's access ends.
func (s *Server) liveContext(ctx context.Context, tok *store.Token, vmID string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	forget := s.track(tok, vmID, func(string) { cancel() })
	return ctx, func() { forget(); cancel() }
}
