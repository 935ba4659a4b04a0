package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/release"
)

// Activate starts spec's release beside the current one, waits for its web
// process to answer, moves traffic to it, then stops the old release. When the
// new one fails, it is stopped and the old one keeps serving. out receives the
// progress lines for the person deploying.
func (s *Supervisor) Activate(ctx context.Context, spec release.Spec, out func(string)) error {
	s.op.Lock()
	defer s.op.Unlock()
	s.mu.Lock()
	old := s.current
	s.mu.Unlock()
	// The other slot may still hold the release before the current one, being
	// stopped: wait until it is free.
	select {
	case <-s.retired:
	default:
		say(out, "-----> Waiting for the previous release to finish its requests and stop")
		select {
		case <-s.retired:
		case <-ctx.Done():
			return fmt.Errorf("deploy canceled")
		}
	}
	slotName := "a"
	if old != nil && old.slot.name == "a" {
		slotName = "b"
	}
	s.log.Printf("activating v%d (build %d) in slot %s", spec.Version, spec.Build, slotName)
	r, err := s.start(ctx, spec, slotName, out)
	if err != nil {
		s.log.Printf("v%d: %v", spec.Version, err)
		return err
	}
	types := make([]string, 0, len(r.procs))
	for _, p := range r.procs {
		types = append(types, p.typ)
	}
	say(out, "-----> Starting %s (v%d)", strings.Join(types, ", "), spec.Version)
	if r.target != nil {
		if err := s.waitHealthy(ctx, r, out); err != nil {
			s.stopRunning(r)
			s.log.Printf("v%d failed its health check: %v", spec.Version, err)
			return &HealthError{Reason: err.Error(), Tail: r.tail.get()}
		}
	}
	s.listen(spec.Port)
	if err := writeCurrent(spec); err != nil {
		s.stopRunning(r)
		return err
	}
	s.mu.Lock()
	s.current = r
	s.mu.Unlock()
	prev := s.proxy.swap(r.target)
	s.log.Printf("v%d is live", spec.Version)
	if old != nil {
		say(out, "-----> Traffic moved to v%d; stopping v%d", spec.Version, old.spec.Version)
		// Stop the old release in the background: the deploy is done once traffic
		// has moved, and requests still in flight finish first.
		retired := make(chan struct{})
		s.retired = retired
		go func() {
			defer close(retired)
			s.proxy.drain(prev, 30*time.Second)
			s.stopRunning(old)
			s.log.Printf("v%d stopped", old.spec.Version)
		}()
	}
	return nil
}

// HealthError is a release whose web process never answered, with the last
// lines its processes printed.
type HealthError struct {
	Reason string
	Tail   []string
}

func (e *HealthError) Error() string { return e.Reason }

// waitHealthy waits until the web process accepts connections on its port and,
// if it speaks HTTP, answers below 500; it gives up at the spec's timeout or as
// soon as the process exits.
func (s *Supervisor) waitHealthy(ctx context.Context, r *running, out func(string)) error {
	var web *proc
	for _, p := range r.procs {
		if p.typ == "web" {
			web = p
		}
	}
	timeout := time.Duration(r.spec.HealthTimeout()) * time.Second
	addr := net.JoinHostPort(r.slot.appIP.String(), fmt.Sprint(r.spec.Port))
	say(out, "-----> Waiting for web to answer on port %d (up to %s)", r.spec.Port, timeout)
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastNote := time.Now()
	last := "it never accepted a connection"
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("deploy canceled")
		case msg := <-web.exits:
			return fmt.Errorf("web %s before answering on port %d", msg, r.spec.Port)
		case <-deadline.C:
			return fmt.Errorf("web did not answer on port %d within %s: %s (set %s to wait longer)", r.spec.Port, timeout, last, release.HealthTimeoutVar)
		case <-tick.C:
		}
		ok, why := probe(ctx, addr)
		if ok {
			say(out, "       web answered %s after %.1fs", why, time.Since(start).Seconds())
			return nil
		}
		last = why
		if time.Since(lastNote) > 20*time.Second {
			say(out, "       still waiting for web (%s so far): %s", time.Since(start).Round(time.Second), why)
			lastNote = time.Now()
		}
	}
}

// probe connects to addr; an HTTP answer must be below 500, anything else that
// accepts the connection counts as up.
func probe(ctx context.Context, addr string) (bool, string) {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, "nothing listening yet"
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: fcm-healthcheck\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return true, "(a connection, not HTTP)"
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return false, fmt.Sprintf("it answered HTTP %d", resp.StatusCode)
	}
	return true, fmt.Sprintf("HTTP %d", resp.StatusCode)
}

// Restart starts the current release again, beside itself, and switches.
func (s *Supervisor) Restart(ctx context.Context, out func(string)) error {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur == nil {
		return fmt.Errorf("no release to restart: deploy with git push first")
	}
	spec := cur.spec
	spec.RunRelease = false
	return s.Activate(ctx, spec, out)
}

// PS lists the current release's processes.
func (s *Supervisor) PS() []api.Process {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	out := []api.Process{}
	if cur == nil {
		return out
	}
	for _, p := range cur.procs {
		p.mu.Lock()
		out = append(out, api.Process{Type: p.typ, Command: p.command, Release: cur.spec.Version, State: p.state,
			PID: p.pid, Restarts: p.restarts, Since: p.since, LastExit: p.lastExit})
		p.mu.Unlock()
	}
	return out
}
