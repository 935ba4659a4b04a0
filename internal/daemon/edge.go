package daemon

import (
	"context"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// Route states in api.VM.
const (
	RouteApplied = "applied"
	RoutePending = "pending"
)

// SiteOf is how the edge sees a VM, and whether it has a route at all.
func SiteOf(v *store.VM) (edge.Site, bool) {
	return edge.Site{Name: v.Name, IP: v.IP, Port: v.Port, State: v.State, Domains: v.Domains}, !v.NoExpose
}

// Sites lists the VMs that get a route, for the edge's reconciler.
func Sites(st *store.Store) func() ([]edge.Site, error) {
	return func() ([]edge.Site, error) {
		vms, err := st.ListVMs()
		if err != nil {
			return nil, err
		}
		var sites []edge.Site
		for _, v := range vms {
			if v.State == api.StateCreating {
				continue // routed once it runs: one Caddy reload per create, not two
			}
			if s, ok := SiteOf(v); ok {
				sites = append(sites, s)
			}
		}
		return sites, nil
	}
}

// toAPI is a VM's wire form with its public URL: https://<name>.<domain> and
// whether Caddy has its route, when there is an edge.
func (s *Server) toAPI(v *store.VM) api.VM {
	a := vm.ToAPI(v)
	site, exposed := SiteOf(v)
	if s.Edge == nil || !exposed {
		return a
	}
	a.URL = s.Edge.Config().URL(v.Name)
	a.Domains = v.Domains
	a.Route = RoutePending
	if s.Edge.Applied(site) {
		a.Route = RouteApplied
	}
	return a
}

// routeChanged tells the edge a VM changed. After a create or start (st is
// the request's progress stream) it waits a little for the route, so the
// answer can say it is applied.
func (s *Server) routeChanged(st *stream, v *store.VM) {
	if s.Edge == nil {
		return
	}
	if st == nil || v == nil || v.NoExpose {
		s.Edge.Trigger()
		return
	}
	st.progress(v, "route", s.Edge.Config().URL(v.Name))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if !s.Edge.Sync(ctx) {
		st.progress(v, "route", "Caddy has not taken the route yet: fcm keeps trying (see the daemon's log)")
	}
}
