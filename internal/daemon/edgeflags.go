package daemon

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/fcmhost/fcm/internal/edge"
)

// EdgeOptions are the daemon's flags for Caddy and certificates.
type EdgeOptions struct {
	CaddyAdmin string // Caddy's admin API; "off" for no edge
	Domain     string // default: <host-ip-with-dashes>.sslip.io
	TLS        string // acme (default) or internal
	ACMECA     string
	ACMEEmail  string
	ACMECARoot string
}

// config turns the flags into the edge's config, or nil for no edge.
func (o EdgeOptions) config(listen string, vmSubnet netip.Prefix) (*edge.Config, error) {
	if o.CaddyAdmin == "off" || o.CaddyAdmin == "" {
		return nil, nil
	}
	c := edge.Config{Admin: o.CaddyAdmin, Domain: strings.ToLower(strings.TrimSuffix(o.Domain, ".")), Daemon: listen,
		TLS: edge.TLS{CA: o.ACMECA, Email: o.ACMEEmail, CARoot: o.ACMECARoot}, WakeSecret: rand.Text()}
	switch o.TLS {
	case "", "acme":
	case "internal":
		c.TLS.Internal = true
	default:
		return nil, fmt.Errorf("--tls %q: want acme (certificates from --acme-ca) or internal (Caddy's own CA)", o.TLS)
	}
	if c.Domain == "" {
		ip, err := hostAddress(vmSubnet)
		if err != nil {
			return nil, fmt.Errorf("--domain: %v; pass --domain (a name whose subdomains point at this host), or --caddy-admin off", err)
		}
		c.Domain = strings.ReplaceAll(ip.String(), ".", "-") + ".sslip.io"
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	return &c, nil
}

// hostAddress is the host's address for a default domain: the source address
// of its default route (a UDP connect sends nothing), else its first global
// IPv4 address outside the VMs' subnet.
func hostAddress(vmSubnet netip.Prefix) (netip.Addr, error) {
	if conn, err := net.Dial("udp4", "192.0.2.1:53"); err == nil {
		defer conn.Close()
		if a, ok := netip.AddrFromSlice(conn.LocalAddr().(*net.UDPAddr).IP); ok {
			return a.Unmap(), nil
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr()
		if ip.Is4() && ip.IsGlobalUnicast() && !vmSubnet.Contains(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, errors.New("cannot tell this host's address (no default route, no global IPv4 address)")
}
