package daemon

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// Bounds of the requests the waker holds for a VM while it wakes: beyond
// them a request is answered 503 with Retry-After.
const (
	WakeMaxWaiting = 1000             // requests waiting for one VM
	WakeMaxWait    = 30 * time.Second // how long one waits
	// RouteBackAfter is how long after a wake the VM's route is put back
	// to go straight to it.
	RouteBackAfter = 2 * time.Second
)

// waker takes the requests Caddy sends for a sleeping VM (its route points
// here while it is suspended): it wakes the VM once, however many requests
// wait, forwards them, and has the edge route the VM directly again.
type waker struct {
	s  *Server
	mu sync.Mutex
	// calls are the wakes in progress, by VM id.
	calls map[string]*wakeCall
}

type wakeCall struct {
	done    chan struct{}
	err     error
	vm      *store.VM
	waiting int
}

// isWake says whether r is a request Caddy sent for a sleeping VM: it
// carries the edge's wake secret.
func (s *Server) isWake(r *http.Request) bool {
	if s.Edge == nil {
		return false
	}
	secret := s.Edge.Config().WakeSecret
	got := r.Header.Get(edge.WakeHeader)
	return secret != "" && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(secret)) == 1
}

func (wk *waker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.Header.Get(edge.WakeVMHeader)
	r.Header.Del(edge.WakeHeader)
	r.Header.Del(edge.WakeVMHeader)
	v, err := wk.s.Store.GetVM(name)
	if err != nil || v.NoExpose {
		http.Error(w, fmt.Sprintf("no vm %s\n", name), http.StatusNotFound)
		return
	}
	if v.State != api.StateRunning {
		t := time.Now()
		if v, err = wk.wake(r.Context(), v); err != nil {
			wk.s.logger().Warn("waker: request not answered", "vm", name, "err", err)
			w.Header().Set("Retry-After", "5")
			http.Error(w, fmt.Sprintf("%s could not be woken: %v\n", name, err), http.StatusServiceUnavailable)
			return
		}
		wk.s.logger().Info("waker: request forwarded", "vm", name, "waited", time.Since(t).Round(time.Millisecond))
	}
	forward(w, r, v)
}

// errTooMany is the answer to a request beyond WakeMaxWaiting.
var errTooMany = errors.New("too many requests wait for it")

// wake returns vm once it runs, waking it if it sleeps: one wake per VM at a
// time, shared by every request that waits for it, each for at most
// WakeMaxWait.
func (wk *waker) wake(ctx context.Context, v *store.VM) (*store.VM, error) {
	wk.mu.Lock()
	if wk.calls == nil {
		wk.calls = map[string]*wakeCall{}
	}
	c := wk.calls[v.ID]
	if c == nil {
		c = &wakeCall{done: make(chan struct{})}
		wk.calls[v.ID] = c
		go wk.run(c, v)
	}
	if c.waiting >= WakeMaxWaiting {
		wk.mu.Unlock()
		return nil, errTooMany
	}
	c.waiting++
	wk.mu.Unlock()
	defer func() { wk.mu.Lock(); c.waiting--; wk.mu.Unlock() }()
	t := time.NewTimer(WakeMaxWait)
	defer t.Stop()
	select {
	case <-c.done:
		return c.vm, c.err
	case <-t.C:
		return nil, fmt.Errorf("it did not wake within %s", WakeMaxWait)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run wakes v: a VM still on its way to sleep is waited for first; one
// already running (woken by someone else) is taken as it is.
func (wk *waker) run(c *wakeCall, v *store.VM) {
	defer func() {
		wk.mu.Lock()
		delete(wk.calls, v.ID)
		wk.mu.Unlock()
		close(c.done)
	}()
	sl, ok := wk.s.VMs.(Sleeper)
	if !ok {
		c.err = errors.New("this daemon cannot wake vms")
		return
	}
	deadline := time.Now().Add(WakeMaxWait)
	for {
		cur, err := wk.s.Store.GetVM(v.Name)
		if err != nil || cur.ID != v.ID {
			c.err = fmt.Errorf("vm %s is gone", v.Name)
			return
		}
		switch cur.State {
		case api.StateRunning:
			c.vm = cur
			return
		case api.StateSuspended:
			t := time.Now()
			woke, err := sl.Wake(context.Background(), cur.Name, cur.ID)
			if errors.Is(err, vm.ErrBusy) {
				break // someone else acts on it: look again
			}
			if err != nil {
				c.err = err
				return
			}
			wk.s.logger().Info("waker: vm woken by a request", "vm", cur.Name, "took", time.Since(t).Round(time.Millisecond))
			// The route goes straight to it again, once the requests that
			// waited are through: a config reload under them would end their
			// HTTP/2 connections. Meanwhile the waker forwards new ones.
			time.AfterFunc(RouteBackAfter, func() { wk.s.routeChanged(nil, woke) })
			c.vm = woke
			return
		case api.StateSuspending, api.StateWaking:
			// On its way: look again.
		default:
			c.err = fmt.Errorf("vm %s is %s", cur.Name, cur.State)
			return
		}
		if time.Now().After(deadline) {
			c.err = fmt.Errorf("vm %s stayed %s", cur.Name, cur.State)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wakeTransport is the waker's to VMs: like Caddy's (edge.UpstreamIdle), it
// keeps an idle connection no longer than 2 s, since an open one counts as
// the VM in use (vm.Manager.SuspendIdle).
var wakeTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.IdleConnTimeout = 2 * time.Second
	return t
}()

// forward proxies r to v's port as Caddy would have: the Host and Caddy's
// X-Forwarded-* headers kept, responses streamed, upgrades passed through.
func forward(w http.ResponseWriter, r *http.Request, v *store.VM) {
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(v.IP, strconv.Itoa(v.Port))}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if vals := pr.In.Header.Values(h); len(vals) > 0 {
					pr.Out.Header[h] = vals
				}
			}
		},
		FlushInterval: -1,
		Transport:     wakeTransport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Retry-After", "5")
			http.Error(w, fmt.Sprintf("%s does not answer: %v\n", v.Name, err), http.StatusBadGateway)
		},
	}
	rp.ServeHTTP(w, r)
}

// waker is the server's one waker: requests from Caddy and commands that use
// a sleeping VM share its wakes.
func (s *Server) waker() *waker {
	s.wkOnce.Do(func() { s.wk = &waker{s: s} })
	return s.wk
}

// Active is a VM manager that records the VMs' use (vm.Manager): a VM in
// use is not suspended for being idle.
type Active interface {
	Activity() *vm.Activity
}

// awake returns v running, waking it first when it sleeps (one wake
// however many wait, as for requests through its URL), and counts it in use
// until done is called: a console, a command or a deploy keeps it awake.
func (s *Server) awake(ctx context.Context, v *store.VM) (woke *store.VM, done func(), err error) {
	done = func() {}
	if a, ok := s.VMs.(Active); ok {
		done = a.Activity().Use(v.ID)
	}
	if !edge.Sleeping(v.State) {
		return v, done, nil
	}
	t := time.Now()
	if v, err = s.waker().wake(ctx, v); err != nil {
		done()
		return nil, nil, err
	}
	s.logger().Info("vm woken for a command", "vm", v.Name, "took", time.Since(t).Round(time.Millisecond))
	return v, done, nil
}
