package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Reconciler keeps Caddy's config what the store says it should be.
type Reconciler struct {
	cfg   Config
	caddy *Caddy
	sites func() ([]Site, error)
	log   *slog.Logger
	// Interval is how often Caddy is checked when nothing has changed (to notice
	// a restart that lost the routes).
	Interval time.Duration
	// Failed, when set, is told of each pass that could not give Caddy the
	// routes it should have.
	Failed func()

	kick chan struct{}

	mu      sync.Mutex
	applied map[string]Site // the sites Caddy had, as wanted, at the last good pass
	ok      bool            // the last pass succeeded
	lastErr string
	wanted  uint64        // passes asked for
	done    uint64        // the last pass to finish began after this many were asked for
	passed  chan struct{} // closed when a pass finishes
}

// New returns a reconciler that reads the wanted sites from sites.
func New(cfg Config, sites func() ([]Site, error), log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{cfg: cfg, caddy: NewCaddy(cfg.Admin), sites: sites, log: log,
		Interval: 2 * time.Second, kick: make(chan struct{}, 1), passed: make(chan struct{})}
}

// Config returns the configuration the reconciler applies.
func (r *Reconciler) Config() Config { return r.cfg }

// Trigger asks for a pass soon (a VM was made, started, stopped or removed).
func (r *Reconciler) Trigger() {
	r.mu.Lock()
	r.wanted++
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Sync asks for a pass and waits until one that began afterwards has finished
// (or ctx ends); it reports whether that pass succeeded.
func (r *Reconciler) Sync(ctx context.Context) bool {
	r.mu.Lock()
	r.wanted++
	want := r.wanted
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
	for {
		r.mu.Lock()
		done, ok, ch := r.done, r.ok, r.passed
		r.mu.Unlock()
		if done >= want {
			return ok
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// Applied says whether Caddy has site's route as it should be.
func (r *Reconciler) Applied(s Site) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, ok := r.applied[s.Name]
	return r.ok && ok && have.Same(s)
}

// Run reconciles until ctx ends: at once, on every Trigger, every Interval,
// and with backoff (up to 2 s) while Caddy is unreachable or refuses.
func (r *Reconciler) Run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for {
		r.mu.Lock()
		began := r.wanted
		r.mu.Unlock()
		_, err := r.Reconcile(ctx)
		r.mu.Lock()
		prevErr := r.lastErr
		r.ok = err == nil
		if began > r.done {
			r.done = began
		}
		close(r.passed)
		r.passed = make(chan struct{})
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		repeated := msg == r.lastErr
		r.lastErr = msg
		r.mu.Unlock()

		wait := r.Interval
		if err != nil && r.Failed != nil {
			r.Failed()
		}
		switch {
		case err != nil:
			if !repeated {
				r.log.Warn("edge: Caddy not updated; retrying", "admin", r.cfg.Admin, "err", err)
			}
			wait = backoff
			backoff = min(2*backoff, 2*time.Second)
		default:
			if prevErr != "" {
				r.log.Info("edge: Caddy updated again", "admin", r.cfg.Admin)
			}
			backoff = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-time.After(wait):
		}
	}
}

// ErrCaddyTooOld is Caddy refusing stream_close_delay: it is older than 2.7.
var ErrCaddyTooOld = errors.New("Caddy is older than 2.7: fcm needs stream_close_delay to keep pushes, progress streams and consoles open while routes change; " +
	"install Caddy 2.7 or later (go install github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9, or Caddy's own packages)")

// Reconcile makes one pass: it reads fcm's parts of Caddy's config and writes
// those that differ from what is wanted. It returns how many parts it wrote.
func (r *Reconciler) Reconcile(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sites, err := r.sites()
	if err != nil {
		return 0, err
	}
	wrote := 0
	// The issuer first, so the certificates of new names come from the right CA.
	policy := r.cfg.policy(sites)
	have, err := r.caddy.Get(ctx, "/id/"+policyID)
	if err != nil {
		return 0, err
	}
	if !same(have, policy) {
		if have != nil {
			err = r.caddy.Patch(ctx, "/id/"+policyID, policy)
		} else if list, gerr := r.caddy.Get(ctx, "/config/apps/tls/automation/policies"); gerr != nil {
			err = gerr
		} else if list != nil {
			err = r.caddy.Put(ctx, "/config/apps/tls/automation/policies/0", policy) // ahead of catch-alls
		} else {
			err = r.caddy.Set(ctx, "/config/apps/tls/automation/policies", []any{policy})
		}
		if err != nil {
			r.log.Error("edge: Caddy refused the TLS policy", "policy", policyID, "err", err)
			return wrote, err
		}
		r.log.Info("edge: applied TLS policy", "issuer", r.issuerName())
		wrote++
	}

	server := r.cfg.server(sites)
	have, err = r.caddy.Get(ctx, serverPath)
	if err != nil {
		return wrote, err
	}
	if !same(have, server) {
		added, removed := diffRoutes(have, sites)
		if err := r.caddy.Set(ctx, serverPath, server); err != nil {
			if strings.Contains(err.Error(), "stream_close_delay") {
				err = fmt.Errorf("%w: %w", ErrCaddyTooOld, err)
			}
			r.log.Error("edge: Caddy refused the routes", "added", added, "removed", removed, "err", err)
			return wrote, err
		}
		r.log.Info("edge: applied routes", "sites", len(sites), "added", added, "removed", removed)
		wrote++
	}
	applied := make(map[string]Site, len(sites))
	for _, s := range sites {
		applied[s.Name] = s
	}
	r.mu.Lock()
	r.applied = applied
	r.mu.Unlock()
	return wrote, nil
}

func (r *Reconciler) issuerName() string {
	if r.cfg.TLS.Internal {
		return "internal"
	}
	if r.cfg.TLS.CA == "" {
		return LetsEncrypt
	}
	return r.cfg.TLS.CA
}

// diffRoutes names the route ids being added and removed, for the log.
func diffRoutes(have any, sites []Site) (added, removed []string) {
	old := map[string]bool{}
	if srv, ok := have.(map[string]any); ok {
		routes, _ := srv["routes"].([]any)
		for _, rt := range routes {
			if m, ok := rt.(map[string]any); ok {
				if id, ok := m["@id"].(string); ok {
					old[id] = true
				}
			}
		}
	}
	now := map[string]bool{daemonID: true}
	for _, s := range sites {
		now[RouteID(s.Name)] = true
	}
	for id := range now {
		if !old[id] {
			added = append(added, id)
		}
	}
	for id := range old {
		if !now[id] {
			removed = append(removed, id)
		}
	}
	return added, removed
}
