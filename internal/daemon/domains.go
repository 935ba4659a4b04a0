package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// Custom domains: a VM served at names of its owner's (fcm domains add),
// each with its own certificate, besides https://<vm>.<domain>. A domain is
// one VM's; it goes with the VM.

// errTaken is a domain another VM holds.
var errTaken = errors.New("taken")

// domainsOf answers with a VM's domains, each with what DNS says now.
func (s *Server) domainsOf(ctx context.Context, v *store.VM) []api.Domain {
	out := []api.Domain{}
	site, _ := SiteOf(v)
	applied := s.Edge.Applied(site)
	for _, d := range v.Domains {
		a := api.Domain{Domain: d, URL: "https://" + d, Route: RoutePending, DNS: s.checkDNS(ctx, v.Name, d)}
		if applied {
			a.Route = RouteApplied
		}
		out = append(out, a)
	}
	return out
}

// listDomains is GET /v1/vms/{name}/domains.
func (s *Server) listDomains(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok || !s.edgeForDomains(w, v) {
		return
	}
	writeJSON(w, http.StatusOK, api.ListDomainsResponse{Domains: s.domainsOf(r.Context(), v)})
}

// edgeForDomains answers 400 when custom domains cannot be served: no edge,
// or a VM without a public URL.
func (s *Server) edgeForDomains(w http.ResponseWriter, v *store.VM) bool {
	switch {
	case s.Edge == nil:
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "this daemon serves no HTTPS (no --domain and Caddy): custom domains need it")
		return false
	case v.NoExpose:
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("%s has no public URL (made with --no-expose): custom domains need one", v.Name))
		return false
	}
	return true
}

// addDomain is POST /v1/vms/{name}/domains: 201 and the domain, with what
// DNS says of it (a domain that does not point here yet is added all the
// same: its certificate is issued once it does). 409 taken when another VM
// has it.
func (s *Server) addDomain(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.AddDomainRequest
	if !decode(w, r, &req) {
		return
	}
	found, ok := s.lookup(w, r, tok)
	if !ok || !s.edgeForDomains(w, found) {
		return
	}
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(req.Domain)), ".")
	if note := noteOf(r); note != nil {
		note.detail = d
	}
	if err := s.Edge.Config().ValidateCustomDomain(d); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	var v *store.VM
	err := s.Store.Update(func(tx *store.Tx) error {
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		for _, o := range vms {
			if o.Name == found.Name || !slices.Contains(o.Domains, d) {
				continue
			}
			if visible(tok, o) {
				return fmt.Errorf("%w: %s is already %s's: remove it there first (fcm domains rm %s %s)", errTaken, d, o.Name, o.Name, d)
			}
			return fmt.Errorf("%w: %s is taken: another VM on this host serves it", errTaken, d)
		}
		if v, err = tx.VM(found.Name); err != nil {
			return err
		}
		if v.ID != found.ID {
			return fmt.Errorf("vm %q: %w", found.Name, store.ErrNotFound)
		}
		if slices.Contains(v.Domains, d) {
			return nil // added already: the same answer
		}
		if len(v.Domains) >= api.MaxDomainsPerVM {
			return fmt.Errorf("%w: %s has %d domains, the most a VM may have", errTooManyDomains, v.Name, len(v.Domains))
		}
		v.Domains = append(slices.Clone(v.Domains), d)
		return tx.PutVM(v)
	})
	switch {
	case errors.Is(err, errTaken):
		writeError(w, http.StatusConflict, api.CodeTaken, strings.TrimPrefix(err.Error(), "taken: "))
		return
	case errors.Is(err, errTooManyDomains):
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, strings.TrimPrefix(err.Error(), errTooManyDomains.Error()+": "))
		return
	case err != nil:
		s.fail(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	s.Edge.Sync(ctx) // so that the answer can say the route is applied
	for _, a := range s.domainsOf(r.Context(), v) {
		if a.Domain == d {
			writeJSON(w, http.StatusCreated, a)
			return
		}
	}
}

var errTooManyDomains = errors.New("too many domains")

// removeDomain is DELETE /v1/vms/{name}/domains/{domain}: 204.
func (s *Server) removeDomain(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	found, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	d := strings.ToLower(r.PathValue("domain"))
	if note := noteOf(r); note != nil {
		note.detail = d
	}
	_, err := s.Store.UpdateVM(found.Name, func(v *store.VM) error {
		if v.ID != found.ID || !slices.Contains(v.Domains, d) {
			return fmt.Errorf("%s has no domain %s: %w", found.Name, d, store.ErrNotFound)
		}
		v.Domains = slices.DeleteFunc(slices.Clone(v.Domains), func(x string) bool { return x == d })
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("%s has no domain %s", found.Name, d))
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	if s.Edge != nil {
		s.Edge.Trigger()
	}
	w.WriteHeader(http.StatusNoContent)
}

// checkDNS says whether domain points at this host: whether any address it
// resolves to is one of fcm.<domain>'s (the name the operator pointed at
// this host when setting it up).
func (s *Server) checkDNS(ctx context.Context, vmName, domain string) api.DNSCheck {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res := s.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	cfg := s.Edge.Config()
	c := api.DNSCheck{Target: cfg.Host(vmName)}
	host, herr := res.LookupHost(ctx, cfg.Host("fcm"))
	addrs, derr := res.LookupHost(ctx, domain)
	slices.Sort(host)
	slices.Sort(addrs)
	c.Host, c.Addresses = host, addrs
	for _, a := range addrs {
		if slices.Contains(host, a) {
			c.Points = true
		}
	}
	want := fmt.Sprintf("a CNAME record to %s", c.Target)
	if len(host) > 0 {
		kind := "an A"
		if net.ParseIP(host[0]).To4() == nil {
			kind = "an AAAA"
		}
		want = fmt.Sprintf("%s record for %s (or a CNAME to %s)", kind, host[0], c.Target)
	}
	switch {
	case c.Points:
		c.Message = fmt.Sprintf("%s points at this host (%s)", domain, strings.Join(addrs, ", "))
	case derr != nil && len(addrs) == 0:
		c.Message = fmt.Sprintf("%s does not resolve yet: add %s", domain, want)
	default:
		c.Message = fmt.Sprintf("%s does not point at this host yet (it resolves to %s): add %s", domain, strings.Join(addrs, ", "), want)
	}
	if herr != nil {
		s.logger().Warn("domains: this host's own name does not resolve", "name", cfg.Host("fcm"), "err", herr)
	}
	return c
}
