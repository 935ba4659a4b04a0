package supervisor

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// proxy serves the VM's public port: each request goes to the web process of
// the current release (in its slot), or to the placeholder page before the
// first deploy. Switching releases swaps one pointer; requests already on their
// way finish where they started.
type proxy struct {
	target    atomic.Pointer[target]
	transport *http.Transport
	log       *appLog
}

// target is one release's web process, with its requests in flight.
type target struct {
	version  int
	rp       *httputil.ReverseProxy
	inflight atomic.Int64
}

func newProxy(log *appLog) *proxy {
	p := &proxy{log: log}
	p.transport = &http.Transport{
		DialContext:         dialRetry,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}
	return p
}

// dialRetry dials, retrying refused connections for a few seconds, so a web
// process that is restarting (crash, VM boot) holds requests instead of failing.
func dialRetry(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *proxy) newTarget(version int, addr string) *target {
	u := &url.URL{Scheme: "http", Host: addr}
	t := &target{version: version}
	t.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			// Keep what Caddy said about the client.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} {
				if v := r.In.Header.Values(h); len(v) > 0 {
					r.Out.Header[h] = v
				}
			}
		},
		Transport:     p.transport,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Printf("proxy: %s %s: %v", r.Method, r.URL.Path, err)
			http.Error(w, "the app is not answering: "+err.Error(), http.StatusBadGateway)
		},
	}
	return t
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := p.target.Load()
	if t == nil {
		placeholder(w)
		return
	}
	t.inflight.Add(1)
	defer t.inflight.Add(-1)
	t.rp.ServeHTTP(w, r)
}

// swap makes t current and returns the one it replaces.
func (p *proxy) swap(t *target) *target { return p.target.Swap(t) }

// drain waits until old has no requests in flight, up to timeout.
func (p *proxy) drain(old *target, timeout time.Duration) {
	if old == nil {
		return
	}
	deadline := time.Now().Add(timeout)
	for old.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	p.transport.CloseIdleConnections()
}

// serve listens on port until ctx ends.
func (p *proxy) serve(ctx context.Context, port int) error {
	srv := &http.Server{Addr: fmt.Sprintf(":%d", port), Handler: p, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.ListenAndServe()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func placeholder(w http.ResponseWriter) {
	host, _ := os.Hostname()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Fcm-Placeholder", "1")
	fmt.Fprintf(w, `<!doctype html>
<html><head><meta charset="utf-8"><title>%[1]s</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>%[1]s is running</h1>
<p>This VM has no app yet. Deploy one with <code>git push fcm main</code>; it will be served here.</p>
<p><small>fcm placeholder</small></p>
</body></html>
`, html.EscapeString(host))
}
