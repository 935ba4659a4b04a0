package edge

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// LetsEncrypt is the default ACME directory.
const LetsEncrypt = "https://acme-v02.api.letsencrypt.org/directory"

// Caddy config locations fcm owns.
const (
	serverPath  = "/config/apps/http/servers/fcm"
	policyID    = "fcm-tls"
	daemonID    = "fcm-daemon"
	routePrefix = "fcm-vm-"
	// DaemonHost is the name under the domain that reaches the daemon.
	DaemonHost = "fcm"
)

// Config says where Caddy is and what it should serve.
type Config struct {
	Admin  string // Caddy's admin API, e.g. http://127.0.0.1:2019 or unix//run/caddy/admin.sock
	Domain string // VMs are <name>.<Domain>, the daemon fcm.<Domain>
	Daemon string // the daemon's listener (host:port) Caddy proxies fcm.<Domain> to
	TLS    TLS
	// WakeSecret goes, in WakeHeader, with every request Caddy sends the
	// daemon's waker for a sleeping VM: the daemon takes a request as one to
	// wake a VM for only with it (a random value of the daemon's run).
	WakeSecret string
}

// Headers of a request for a sleeping VM that Caddy sends the daemon's waker
// (they replace whatever the client sent).
const (
	WakeHeader   = "X-Fcm-Wake"
	WakeVMHeader = "X-Fcm-Vm"
)

// Sleeping says whether a VM in state is routed to the daemon's waker: it
// is suspended, or on its way to or from it.
func Sleeping(state string) bool {
	return state == "suspended" || state == "suspending" || state == "waking"
}

// TLS says how Caddy gets certificates.
type TLS struct {
	Internal bool   // Caddy's own CA (a LAN, tests); otherwise ACME
	CA       string // ACME directory URL (default Let's Encrypt)
	Email    string // ACME account email (optional)
	CARoot   string // a PEM file of roots Caddy trusts for the CA's own HTTPS
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateDomain accepts a DNS name of two labels or more, lowercase.
func ValidateDomain(d string) error {
	labels := strings.Split(d, ".")
	if len(d) > 200 || len(labels) < 2 {
		return fmt.Errorf("invalid domain %q: want a DNS name like apps.example.com", d)
	}
	for _, l := range labels {
		if !labelRE.MatchString(l) {
			return fmt.Errorf("invalid domain %q: label %q is not a DNS label (lowercase letters, digits, hyphens)", d, l)
		}
	}
	return nil
}

// Validate checks the config before the daemon starts with it.
func (c Config) Validate() error {
	if err := validateAdmin(c.Admin); err != nil {
		return err
	}
	if err := ValidateDomain(c.Domain); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Daemon); err != nil {
		return fmt.Errorf("daemon address %q: %w", c.Daemon, err)
	}
	if c.TLS.Internal {
		if c.TLS.CA != "" || c.TLS.Email != "" || c.TLS.CARoot != "" {
			return errors.New("--tls internal uses Caddy's own CA: it takes no --acme-ca, --acme-email or --acme-ca-root")
		}
		return nil
	}
	if c.TLS.CA != "" {
		if u, err := url.Parse(c.TLS.CA); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("invalid ACME directory %q: want an https:// URL", c.TLS.CA)
		}
	}
	if c.TLS.Email != "" && !strings.Contains(c.TLS.Email, "@") {
		return fmt.Errorf("invalid ACME email %q", c.TLS.Email)
	}
	if c.TLS.CARoot != "" {
		if _, err := os.Stat(c.TLS.CARoot); err != nil {
			return fmt.Errorf("ACME CA root: %w", err)
		}
	}
	return nil
}

// Site is one VM as the edge sees it.
type Site struct {
	Name  string
	IP    string
	Port  int
	State string // running: proxied; otherwise a 503 saying so
	// Domains are the VM's own names (fcm domains add), served as its
	// <name>.<domain> is, each with its own certificate.
	Domains []string
}

// Same says whether two sites get the same route.
func (s Site) Same(o Site) bool {
	return s.Name == o.Name && s.IP == o.IP && s.Port == o.Port && s.State == o.State && slices.Equal(s.Domains, o.Domains)
}

// ValidateCustomDomain checks a name a VM is to be served at besides
// <vm>.<domain>: a DNS name of two labels or more, not the domain fcm's own
// names live under nor one of them.
func (c Config) ValidateCustomDomain(d string) error {
	if err := ValidateDomain(d); err != nil {
		return err
	}
	if d == c.Domain || strings.HasSuffix(d, "."+c.Domain) {
		return fmt.Errorf("%s is under %s, whose names fcm gives out itself (each VM is <name>.%s): pick a name of your own", d, c.Domain, c.Domain)
	}
	return nil
}

// Host is the VM's public name.
func (c Config) Host(name string) string { return name + "." + c.Domain }

// URL is the VM's public address.
func (c Config) URL(name string) string { return "https://" + c.Host(name) }

// StreamCloseDelay is how long Caddy (2.7 or later) keeps streams through a
// route open after a config change replaced it: every create or destroy
// changes the config, and a push, a progress stream or a console must not be
// cut by someone else's VM.
const StreamCloseDelay = "1h"

// UpstreamIdle is how long Caddy keeps an idle connection to a VM's app open
// after a request: the daemon takes an open one as the VM in use (see
// vm.Manager.SuspendIdle), so it must not linger much past the request.
const UpstreamIdle = "2s"

// RouteID is the @id of a VM's route.
func RouteID(name string) string { return routePrefix + name }

func (c Config) route(s Site) map[string]any {
	var handle []any
	switch {
	case s.State == "running":
		handle = []any{map[string]any{"handler": "reverse_proxy", "stream_close_delay": StreamCloseDelay,
			"transport": map[string]any{"protocol": "http", "keep_alive": map[string]any{"idle_timeout": UpstreamIdle}},
			"upstreams": []any{map[string]any{"dial": net.JoinHostPort(s.IP, fmt.Sprint(s.Port))}}}}
	case Sleeping(s.State) && c.WakeSecret != "":
		// The daemon's waker wakes it (once, however many requests wait) and
		// forwards the requests; then the route goes straight to it again.
		handle = []any{map[string]any{"handler": "reverse_proxy", "flush_interval": -1, "stream_close_delay": StreamCloseDelay,
			"headers": map[string]any{"request": map[string]any{"set": map[string]any{
				WakeHeader: []any{c.WakeSecret}, WakeVMHeader: []any{s.Name}}}},
			"upstreams": []any{map[string]any{"dial": c.daemonDial()}}}}
	default:
		handle = []any{map[string]any{"handler": "static_response", "status_code": 503,
			"headers": map[string]any{"Content-Type": []any{"text/plain; charset=utf-8"}},
			"body":    unavailable(s)}}
	}
	hosts := []any{c.Host(s.Name)}
	for _, d := range s.Domains {
		hosts = append(hosts, d)
	}
	return map[string]any{"@id": RouteID(s.Name), "match": []any{map[string]any{"host": hosts}},
		"handle": handle, "terminal": true}
}

// unavailable is the page of a VM that is not running.
func unavailable(s Site) string {
	if s.State == "stopped" {
		return fmt.Sprintf("%s is stopped: start it with: fcm start %s\n", s.Name, s.Name)
	}
	return fmt.Sprintf("%s is %s; try again in a moment\n", s.Name, s.State)
}

// server is fcm's HTTP server in Caddy: :443 only (Caddy adds its own :80
// server that redirects to HTTPS and answers HTTP-01 challenges), one route per
// site plus the daemon's, and a TLS connection policy so that :443 stays HTTPS
// even with no route.
func (c Config) server(sites []Site) map[string]any {
	sort.Slice(sites, func(i, j int) bool { return sites[i].Name < sites[j].Name })
	routes := []any{map[string]any{"@id": daemonID,
		"match": []any{map[string]any{"host": []any{c.Host(DaemonHost)}}},
		"handle": []any{map[string]any{"handler": "reverse_proxy", "flush_interval": -1, // progress streams
			"stream_close_delay": StreamCloseDelay,
			"upstreams":          []any{map[string]any{"dial": c.daemonDial()}}}},
		"terminal": true}}
	for _, s := range sites {
		routes = append(routes, c.route(s))
	}
	return map[string]any{"listen": []any{":443"}, "routes": routes, "tls_connection_policies": []any{map[string]any{}}}
}

// daemonDial is the daemon's address as Caddy dials it (an unspecified
// listen address is reached on loopback).
func (c Config) daemonDial() string {
	host, port, _ := net.SplitHostPort(c.Daemon)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// policy is fcm's TLS automation policy: which CA issues the certificates of
// every name under the domain and of the sites' own domains.
func (c Config) policy(sites []Site) map[string]any {
	issuer := map[string]any{"module": "internal"}
	if !c.TLS.Internal {
		ca := c.TLS.CA
		if ca == "" {
			ca = LetsEncrypt
		}
		issuer = map[string]any{"module": "acme", "ca": ca}
		if c.TLS.Email != "" {
			issuer["email"] = c.TLS.Email
		}
		if c.TLS.CARoot != "" {
			issuer["trusted_roots_pem_files"] = []any{c.TLS.CARoot}
		}
	}
	subjects := []any{"*." + c.Domain}
	var own []string
	for _, s := range sites {
		own = append(own, s.Domains...)
	}
	sort.Strings(own)
	for _, d := range own {
		subjects = append(subjects, d)
	}
	return map[string]any{"@id": policyID, "subjects": subjects, "issuers": []any{issuer}}
}
