package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/fcmhost/fcm/internal/metrics"
	"github.com/fcmhost/fcm/internal/store"
)

// newMetrics makes the daemon's metrics over st's VMs, or nil when there is
// no --metrics-listen.
func newMetrics(addr string, st *store.Store) *metrics.Metrics {
	if addr == "" || addr == "off" {
		return nil
	}
	return metrics.New(func() ([]metrics.VM, error) {
		vms, err := st.ListVMs()
		if err != nil {
			return nil, err
		}
		out := make([]metrics.VM, 0, len(vms))
		for _, v := range vms {
			out = append(out, metrics.VM{Name: v.Name, ID: v.ID, State: v.State, Tap: v.Tap, MemoryMiB: v.MemoryMiB})
		}
		return out, nil
	})
}

// observe is what the VM manager reports durations to (nil: nothing).
func observe(m *metrics.Metrics) func(op string, took time.Duration) {
	if m == nil {
		return nil
	}
	return func(op string, took time.Duration) { m.Observe(op, took.Seconds()) }
}

// serveMetrics serves m at /metrics on addr, on a listener of its own (not
// the API's: no token, so it is meant for loopback or a scraper's network),
// until ctx ends.
func serveMetrics(ctx context.Context, m *metrics.Metrics, addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w (--metrics-listen picks another address, off turns it off)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "fcm's metrics are at /metrics", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: time.Minute}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return ln.Addr(), nil
}
