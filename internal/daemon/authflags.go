package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/store"
)

// LoginOptions are the daemon's flags for people logging in with OIDC.
type LoginOptions struct {
	Issuer       string   // --oidc-issuer (default Google)
	ClientID     string   // --oidc-client-id, or GOOGLE_CLIENT_ID
	ClientSecret string   // --oidc-client-secret, or GOOGLE_CLIENT_SECRET
	Allow        []string // --allow: emails, @domains or * that may log in
	PublicURL    string   // --public-url: the daemon as browsers reach it
	// MaxVMsPerUser is --max-vms-per-user; 0: no limit.
	MaxVMsPerUser int
}

// allowPatterns checks --allow and returns the patterns as stored.
func (o LoginOptions) allowPatterns() ([]string, error) {
	var out []string
	for _, a := range o.Allow {
		for _, p := range strings.Split(a, ",") {
			if strings.TrimSpace(p) == "" {
				continue
			}
			n, err := store.NormalizePattern(p)
			if err != nil {
				return nil, fmt.Errorf("--allow: %w", err)
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// enabled reports whether logins are configured; half a configuration is an
// error.
func (o LoginOptions) enabled() (bool, error) {
	switch {
	case o.ClientID == "" && o.ClientSecret == "":
		return false, nil
	case o.ClientID == "":
		return false, fmt.Errorf("--oidc-client-secret is set but not --oidc-client-id (or GOOGLE_CLIENT_ID)")
	case o.ClientSecret == "":
		return false, fmt.Errorf("--oidc-client-id is set but not --oidc-client-secret (or GOOGLE_CLIENT_SECRET)")
	}
	return true, nil
}

// publicURL is where browsers reach the daemon: --public-url, else
// https://fcm.<domain> through the edge, else the API's own address.
func (o LoginOptions) publicURL(edgeCfg *edge.Config, listen net.Addr) string {
	switch {
	case o.PublicURL != "":
		return o.PublicURL
	case edgeCfg != nil:
		return edgeCfg.URL(edge.DaemonHost)
	}
	return "http://" + listen.String()
}

// setupLogins stores the --allow rules and makes the login service (nil when
// OIDC is not configured).
func setupLogins(o LoginOptions, st *store.Store, edgeCfg *edge.Config, listen net.Addr, log *slog.Logger) (*auth.Service, error) {
	patterns, err := o.allowPatterns()
	if err != nil {
		return nil, err
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.SetFlagRules(patterns) }); err != nil {
		return nil, err
	}
	on, err := o.enabled()
	if err != nil || !on {
		return nil, err
	}
	svc, err := auth.New(auth.Config{Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: o.ClientSecret,
		PublicURL: o.publicURL(edgeCfg, listen)}, st, log)
	if err != nil {
		return nil, err
	}
	var rules []*store.AccessRule
	st.View(func(tx *store.Tx) (err error) { rules, err = tx.AccessRules(); return })
	if len(rules) == 0 {
		log.Warn("OIDC login is on but nobody may log in yet: add --allow alice@example.com (or @example.com), or run fcm users allow")
	}
	log.Info("OIDC login", "issuer", svc.Issuer(), "redirect_url", svc.RedirectURL(), "allow", patterns)
	return svc, nil
}

// purgeEvery is how often expired tokens and logins are purged.
const purgeEvery = time.Hour

// purge removes expired tokens (and those derived from a token that is gone)
// and forgets expired logins. logins may be nil (no OIDC).
func purge(st *store.Store, logins *auth.Service, log *slog.Logger) {
	var n int
	err := st.Update(func(tx *store.Tx) (err error) { n, err = tx.PurgeExpiredTokens(time.Now()); return })
	switch {
	case err != nil:
		log.Error("purge expired tokens", "err", err)
	case n > 0:
		log.Info("purged expired tokens", "tokens", n)
	}
	if logins != nil {
		logins.Pending() // purges the expired logins
	}
}

// keepPurged purges every purgeEvery until ctx ends (the daemon purges once
// at start itself).
func keepPurged(ctx context.Context, st *store.Store, logins *auth.Service, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(purgeEvery):
		}
		purge(st, logins, log)
	}
}
