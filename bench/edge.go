package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
)

const benchDomain = "bench.test"

// runEdgeBench times, with a real Caddy and Pebble: from `create` returning to
// the first good HTTPS answer (route plus certificate issuance), and one
// reconcile pass of 200 routes into a Caddy restarted empty.
func runEdgeBench(w io.Writer, runs int) error {
	dir, err := os.MkdirTemp("", "fcm-bench-edge-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	env, err := edgetest.Start(dir, "10.124.0.1")
	if err != nil {
		return err
	}
	defer env.Close()
	if err := firstHTTPS(w, env, dir, runs); err != nil {
		return err
	}
	return reconcileMany(w, env, 200)
}

func firstHTTPS(w io.Writer, env *edgetest.Env, dir string, runs int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, st, _, err := qemuManager(dir)
	if err != nil {
		return err
	}
	cfg := edge.Config{Admin: edgetest.CaddyAdmin, Domain: benchDomain, Daemon: "127.0.0.1:7777",
		TLS: edge.TLS{CA: edgetest.ACMEDir, CARoot: env.CARoot}}
	rec := edge.New(cfg, daemon.Sites(st), quiet)
	go rec.Run(ctx)
	c, stop, err := benchAPI(m, st, rec)
	if err != nil {
		return err
	}
	defer stop()
	https := env.Client()

	var total, create []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		v, err := c.CreateVM(ctx, api.CreateVMRequest{MemoryMiB: 512}, nil)
		if err != nil {
			return err
		}
		created := time.Now()
		create = append(create, created.Sub(start))
		for {
			resp, err := https.Get(v.URL + "/")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(created) > 2*time.Minute {
				return fmt.Errorf("%s: no HTTPS answer after 2 minutes (%v)", v.URL, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		total = append(total, time.Since(created))
		if err := c.DestroyVM(ctx, v.Name); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "EDGE (Caddy 2.6 + Pebble, HTTP-01)\tMEDIAN\tMAX\tN\n")
	fmt.Fprintf(tw, "create (boot + route applied)\t%s\t%s\t%d\n", percentile(create, 0.5).Round(time.Millisecond),
		percentile(create, 1).Round(time.Millisecond), len(create))
	fmt.Fprintf(tw, "create returned -> first HTTPS 200 (new certificate)\t%s\t%s\t%d\n",
		percentile(total, 0.5).Round(time.Millisecond), percentile(total, 1).Round(time.Millisecond), len(total))
	return tw.Flush()
}

// reconcileMany restarts Caddy empty and times the pass that puts n routes
// back, then a pass with nothing to do. The issuer is Caddy's internal CA, so
// 200 ACME orders do not compete for the CPU.
func reconcileMany(w io.Writer, env *edgetest.Env, n int) error {
	ctx := context.Background()
	sites := make([]edge.Site, n)
	for i := range sites {
		sites[i] = edge.Site{Name: fmt.Sprintf("vm-%03d", i), IP: fmt.Sprintf("172.30.%d.%d", i/250, i%250+2), Port: 3000, State: "running"}
	}
	cfg := edge.Config{Admin: edgetest.CaddyAdmin, Domain: benchDomain, Daemon: "127.0.0.1:7777", TLS: edge.TLS{Internal: true}}
	rec := edge.New(cfg, func() ([]edge.Site, error) { return sites, nil }, quiet)
	env.StopCaddy()
	if err := env.StartCaddy(); err != nil {
		return err
	}
	start := time.Now()
	wrote, err := rec.Reconcile(ctx)
	if err != nil {
		return err
	}
	apply := time.Since(start)
	time.Sleep(5 * time.Second) // Caddy makes the 200 certificates meanwhile
	start = time.Now()
	again, err := rec.Reconcile(ctx)
	if err != nil {
		return err
	}
	check := time.Since(start)
	if wrote != 2 || again != 0 {
		return fmt.Errorf("passes wrote %d then %d parts, want 2 then 0", wrote, again)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nRECONCILE\tROUTES\tTOOK\n")
	fmt.Fprintf(tw, "into a Caddy restarted empty\t%d\t%s\n", n, apply.Round(time.Millisecond))
	fmt.Fprintf(tw, "nothing to change (read and compare, Caddy idle)\t%d\t%s\n", n, check.Round(time.Millisecond))
	return tw.Flush()
}
