package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

const (
	parallelCreatesN = 20  // creates at once
	roundVMs         = 100 // VMs created, listed and destroyed in the round
)

// parallelResult is what the no-boot driver's creates measured.
type parallelResult struct {
	wall                   time.Duration // 20 creates at once
	roundCreate, roundList time.Duration
	roundDestroy           time.Duration
	listed                 int
	problems               []string // errors and leftovers of the 100-VM round
}

// parallelCreates times parallelCreatesN creates at once with the no-boot
// driver (the daemon's bookkeeping: store, disks, keys, tap), then creates
// roundVMs VMs parallelCreatesN at a time, lists them through the API,
// destroys them all through it and checks nothing of them is left: no VM
// directory, tap, lease, VM record or operation. A first create (base import,
// data template) is not counted.
func parallelCreates(ctx context.Context, imageDir string) (*parallelResult, error) {
	dataDir, err := os.MkdirTemp("", "fcm-bench-targets-noboot-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dataDir)
	// No-boot VMs take no memory: let the memory check admit roundVMs of them
	// on any host (a negative reserve adds to MemTotal).
	noMemCheck := func(c *vm.Config) { c.MemoryReserveMiB = -roundVMs * api.MinMemoryMiB }
	m, st, err := benchManagerImage(dataDir, noBoot{}, func(context.Context, *store.VM) error { return nil }, imageDir, noMemCheck)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	req := api.CreateVMRequest{MemoryMiB: api.MinMemoryMiB}
	v, err := m.Create(ctx, "bench", req, nil)
	if err != nil {
		return nil, fmt.Errorf("warm-up create: %w", err)
	}
	if err := m.Destroy(ctx, v.Name, ""); err != nil {
		return nil, err
	}
	res := &parallelResult{}

	create := func(n int) ([]string, []error) {
		return inParallel(n, func(int) (string, error) {
			v, err := m.Create(ctx, "bench", req, nil)
			if err != nil {
				return "", err
			}
			return v.Name, nil
		})
	}
	start := time.Now()
	names, errs := create(parallelCreatesN)
	res.wall = time.Since(start)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d of %d parallel creates failed: %w", len(errs), parallelCreatesN, errors.Join(errs...))
	}
	if _, errs := inParallel(len(names), func(i int) (string, error) { return "", m.Destroy(ctx, names[i], "") }); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	c, stop, err := benchAPI(m, st, nil)
	if err != nil {
		return nil, err
	}
	defer stop()
	problem := func(format string, a ...any) { res.problems = append(res.problems, fmt.Sprintf(format, a...)) }
	start = time.Now()
	names, errs = create(roundVMs)
	res.roundCreate = time.Since(start)
	for _, err := range errs {
		problem("create: %v", err)
	}
	start = time.Now()
	list, err := c.ListVMs(ctx)
	res.roundList = time.Since(start)
	res.listed = len(list)
	if err != nil {
		problem("list: %v", err)
	} else if len(list) != roundVMs {
		problem("listed %d VMs, want %d", len(list), roundVMs)
	}
	start = time.Now()
	_, errs = inParallel(len(names), func(i int) (string, error) { return "", c.DestroyVM(ctx, names[i]) })
	res.roundDestroy = time.Since(start)
	for _, err := range errs {
		problem("destroy: %v", err)
	}
	problems, err := leftovers(dataDir, st)
	if err != nil {
		return nil, err
	}
	res.problems = append(res.problems, problems...)
	return res, nil
}

// inParallel runs do(0..n-1), parallelCreatesN at a time, and returns the
// results of those that succeeded and the errors of the others.
func inParallel(n int, do func(i int) (string, error)) ([]string, []error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		out  []string
		errs []error
		sem  = make(chan struct{}, parallelCreatesN)
	)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := do(i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out = append(out, s)
		}()
	}
	wg.Wait()
	return out, errs
}

// leftovers lists what destroyed VMs left: directories in <data>/vms, taps on
// the bench's bridge, leases, VM records and operations in the store.
func leftovers(dataDir string, st *store.Store) ([]string, error) {
	var out []string
	if ents, err := os.ReadDir(filepath.Join(dataDir, "vms")); err == nil && len(ents) > 0 {
		out = append(out, fmt.Sprintf("%d VM directories left in %s", len(ents), filepath.Join(dataDir, "vms")))
	}
	if ents, err := os.ReadDir("/sys/class/net/fcmb0/brif"); err == nil {
		taps := 0
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "tap_") {
				taps++
			}
		}
		if taps > 0 {
			out = append(out, fmt.Sprintf("%d tap_* left on bridge fcmb0", taps))
		}
	}
	err := st.View(func(tx *store.Tx) error {
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		ops, err := tx.Ops()
		if err != nil {
			return err
		}
		if len(leases) > 0 {
			out = append(out, fmt.Sprintf("%d leases left", len(leases)))
		}
		if len(vms) > 0 {
			out = append(out, fmt.Sprintf("%d VM records left", len(vms)))
		}
		if len(ops) > 0 {
			out = append(out, fmt.Sprintf("%d operations left", len(ops)))
		}
		return nil
	})
	return out, err
}

func (p *parallelResult) rows() []targetRow {
	rate := float64(parallelCreatesN) / p.wall.Seconds()
	round := targetRow{fmt.Sprintf("%d VMs created, listed, destroyed (no-boot)", roundVMs), fmt.Sprintf("%d errors", len(p.problems)),
		"0 errors", verdict(len(p.problems) == 0),
		fmt.Sprintf("create %s (%.0f/s, %d at a time), list %s (%d VMs), destroy %s; no VM dir, tap, lease, record or op left",
			diskBenchDur(p.roundCreate), float64(roundVMs)/p.roundCreate.Seconds(), parallelCreatesN,
			diskBenchDur(p.roundList), p.listed, diskBenchDur(p.roundDestroy))}
	if len(p.problems) > 0 {
		shown := p.problems[:min(len(p.problems), 3)]
		round.detail = strings.Join(shown, "; ")
		if len(p.problems) > len(shown) {
			round.detail += fmt.Sprintf("; and %d more", len(p.problems)-len(shown))
		}
	}
	return []targetRow{
		{fmt.Sprintf("%d parallel creates (no-boot)", parallelCreatesN), fmt.Sprintf("%.1f/s", rate), fmt.Sprintf(">= %d/s", goalCreatesPerSec),
			verdict(rate >= goalCreatesPerSec), fmt.Sprintf("%d creates in %s", parallelCreatesN, diskBenchDur(p.wall))},
		round,
	}
}

func (p *parallelResult) notes() []string {
	return []string{fmt.Sprintf("no-boot creates: data dir on the host's root filesystem, %d MiB VMs, memory check relaxed (they take none); one warm-up create first, not counted", api.MinMemoryMiB)}
}
