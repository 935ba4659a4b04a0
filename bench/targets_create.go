package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// targetFSSize is the loop filesystem the create targets run on: room for a
// full base (about 2 GiB), a VM and create's free-space reserve.
const targetFSSize = 16 << 30

// timedDriver is a vmm.Driver that notes how long each Start took: QEMU's
// exec until its QMP socket answers, the hypervisor's part of a create.
type timedDriver struct {
	vmm.Driver

	mu     sync.Mutex
	starts []time.Duration
}

var _ vmm.Driver = (*timedDriver)(nil)

func (d *timedDriver) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	t := time.Now()
	inst, err := d.Driver.Start(ctx, spec)
	d.mu.Lock()
	d.starts = append(d.starts, time.Since(t))
	d.mu.Unlock()
	return inst, err
}

// last is the duration of the latest Start.
func (d *timedDriver) last() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.starts) == 0 {
		return 0
	}
	return d.starts[len(d.starts)-1]
}

// createResult is what the creates on one filesystem measured.
type createResult struct {
	fs        string
	warmUp    time.Duration              // the first create: base import and data template too
	create    []time.Duration            // Manager.Create with a no-op Ready
	start     []time.Duration            // the driver's Start within each
	steps     map[string][]time.Duration // progress step -> time since the previous one
	order     []string
	used      []int64 // allocated bytes of the VM's directory right after create
	fsDelta   []int64 // the filesystem's free space lost per create
	baseBytes int64   // allocated bytes of the stored base
	diskMsg   string  // what create's disk step said, last create
}

// createOnFS makes a loop filesystem of type fstype, puts a data dir on it
// and times targetCreates creates there with the real QEMU driver and a
// no-op Ready (so the guest's boot is not counted), each VM destroyed right
// after (not timed). A first create, not counted, imports the base and makes
// the data disk template.
func createOnFS(ctx context.Context, fstype, imageDir string) (res *createResult, err error) {
	res = &createResult{fs: fstype, steps: map[string][]time.Duration{}}
	tmp, err := os.MkdirTemp("", "fcm-bench-targets-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	mnt, cleanup, err := diskBenchMount(ctx, tmp, fstype, targetFSSize)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	// Each hypervisor runs as a user of its own: it must reach the data dir.
	for _, d := range []string{tmp, mnt} {
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, err
		}
	}
	dataDir := filepath.Join(mnt, "data")
	if err := os.Mkdir(dataDir, 0o711); err != nil {
		return nil, err
	}
	q, err := qemu.New(qemu.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	drv := &timedDriver{Driver: q}
	m, st, err := benchManagerImage(dataDir, drv, func(context.Context, *store.VM) error { return nil }, imageDir)
	if err != nil {
		return nil, err
	}
	defer st.Close() // before the unmount
	req := api.CreateVMRequest{MemoryMiB: 512}

	t := time.Now()
	v, err := m.Create(ctx, "bench", req, nil)
	if err != nil {
		return nil, fmt.Errorf("warm-up create: %w", err)
	}
	res.warmUp = time.Since(t)
	if err := m.Destroy(ctx, v.Name, ""); err != nil {
		return nil, err
	}
	if res.baseBytes, err = dirAllocated(filepath.Join(dataDir, "images")); err != nil {
		return nil, err
	}

	for range targetCreates {
		before, err := diskBenchSettle(mnt)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		last := start
		v, err := m.Create(ctx, "bench", req, func(_ *store.VM, step, msg string) {
			if step == "disk" {
				res.diskMsg = msg
			}
			if _, ok := res.steps[step]; !ok {
				res.order = append(res.order, step)
			}
			res.steps[step] = append(res.steps[step], time.Since(last))
			last = time.Now()
		})
		took := time.Since(start)
		if err != nil {
			return nil, err
		}
		res.steps["record running"] = append(res.steps["record running"], time.Since(last))
		res.create = append(res.create, took)
		res.start = append(res.start, drv.last())
		used, err := dirAllocated(filepath.Join(dataDir, "vms", v.ID))
		if err != nil {
			return nil, err
		}
		res.used = append(res.used, used)
		unix.Sync()
		after, err := diskBenchFree(mnt)
		if err != nil {
			return nil, err
		}
		res.fsDelta = append(res.fsDelta, before-after)
		if err := m.Destroy(ctx, v.Name, ""); err != nil {
			return nil, err
		}
	}
	res.order = append(res.order, "record running")
	return res, nil
}

// dirAllocated sums the allocated blocks of every file under dir.
func dirAllocated(dir string) (int64, error) {
	var sum int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n, err := disk.Allocated(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // gone meanwhile (a pid file, a socket)
		}
		sum += n
		return err
	})
	return sum, err
}

func (r *createResult) rows() []targetRow {
	own := make([]time.Duration, len(r.create))
	for i := range r.create {
		own[i] = r.create[i] - r.start[i]
	}
	ownP50 := percentile(own, 0.5)
	create := slices.Clone(r.create)
	p50, p90, hi := percentile(create, 0.5), percentile(create, 0.9), percentile(create, 1)
	start := percentile(slices.Clone(r.start), 0.5)
	used, delta := slices.Max(r.used), slices.Max(r.fsDelta)
	return []targetRow{
		{fmt.Sprintf("create overhead p50, %s, full image", r.fs), diskBenchDur(p50), fmt.Sprintf("<= %v", goalCreateOverhead),
			verdict(p50 <= goalCreateOverhead),
			fmt.Sprintf("p90 %s, max %s; of it QEMU Start p50 %s, the rest (fcm) p50 %s; n=%d",
				diskBenchDur(p90), diskBenchDur(hi), diskBenchDur(start), diskBenchDur(ownP50), len(r.create))},
		{fmt.Sprintf("host disk per new VM, %s", r.fs), diskBenchMiB(used), fmt.Sprintf("<= %d MiB", goalVMDisk>>20), verdict(used <= goalVMDisk),
			fmt.Sprintf("max over %d creates (median %s); statfs free-space delta max %s, median %s",
				len(r.used), diskBenchMiB(percentile64(r.used, 0.5)), diskBenchMiB(delta), diskBenchMiB(percentile64(r.fsDelta, 0.5)))},
	}
}

func (r *createResult) notes() []string {
	var parts []string
	for _, s := range r.order {
		name := s
		if s == "ssh" {
			name = "ready (no-op)"
		}
		parts = append(parts, fmt.Sprintf("%s %s", name, diskBenchDur(percentile(r.steps[s], 0.5))))
	}
	return []string{
		fmt.Sprintf("create on %s, where the time goes (medians; boot holds QEMU Start %s): %s; warm-up create (base import, data template) %s, not counted",
			r.fs, diskBenchDur(percentile(slices.Clone(r.start), 0.5)), strings.Join(parts, ", "), diskBenchDur(r.warmUp)),
		fmt.Sprintf("base stored on %s (shared, not counted per VM): %s allocated; create's disk step said: %s", r.fs, diskBenchMiB(r.baseBytes), r.diskMsg),
	}
}

// percentile64 is percentile for byte counts.
func percentile64(v []int64, p float64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}
