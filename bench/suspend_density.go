package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/vm"
)

// The density bench's VMs and the daemon's subnet (room for more than 200).
const (
	densityMemory = 512
	densityDisk   = 1 << 30
	densitySubnet = "172.23.0.0/22"
	// densityFloorKiB: below this much MemAvailable the bench stops creating
	// and requesting (the host is shared; its other work must not be killed).
	densityFloorKiB = 1536 << 10
	// densityDiskFloor: below this much free space on the data dir's
	// filesystem the bench stops creating and requesting, as for memory.
	densityDiskFloor = 10 << 30
	// densityFileEstimate is what one VM's files take on the host, for the
	// overcommit ratio: its memory file as the guest touched it, its disks.
	densityFileEstimate = 160 << 20
)

// densityOpts are the density bench's flags.
type densityOpts struct {
	n            int
	budgetMiB    int
	suspendAfter time.Duration
}

// densityResult is what the density bench measured.
type densityResult struct {
	created                     []string
	createDur                   []time.Duration
	createErrs                  []string
	createTook                  time.Duration
	answered, woke, wasRunning  int
	wakeTotal, otherTotal       []time.Duration
	failures                    []string
	memStartKiB, memMaxKiB      int64
	memMaxAt                    time.Duration // from the first create
	samples, runningPeak        int
	idleSuspends, earlySuspends int
	wakes, wakeFails            int
	wakeShare                   []time.Duration
	diskKiB                     int64
	visitTook                   time.Duration
	stopped                     atomic.Pointer[string] // why the bench stopped early
}

// runDensityBench measures issue 22's density target with a real daemon
// behind a real Caddy: o.n VMs of 512 MiB that sleep after o.suspendAfter
// idle, created two at a time under a memory budget, then each requested by
// its URL in turn while the host's memory in use is sampled every second.
func runDensityBench(ctx context.Context, w io.Writer, o densityOpts) error {
	load := loadAvg()
	totalMiB := int(meminfo()["MemTotal"] >> 10)
	budget := min(o.budgetMiB, totalMiB)
	reserve := max(totalMiB-budget, 1) // 0 would be the daemon's default reserve
	free, err := vm.FreeSpace(os.TempDir())
	if err != nil {
		return err
	}
	// Admission weighs the free space, which shrinks as the VMs' memory
	// files fill (about 115 MiB each here): the ratio leaves room for that.
	room := float64(free - 2<<30 - int64(o.n)*densityFileEstimate) // less --disk-reserve's default
	perVM := float64(densityDisk + int64(api.DefaultSwapMiB+densityMemory)<<20)
	overcommit := max(1, math.Ceil(float64(o.n)*perVM*1.25/max(room, 1<<30)))
	b, err := startSleepBench(ctx, densitySubnet, "--suspend-after", "off",
		"--memory-reserve", strconv.Itoa(reserve), "--disk-overcommit", strconv.FormatFloat(overcommit, 'f', -1, 64))
	if err != nil {
		return err
	}
	defer b.close()

	r := &densityResult{memStartKiB: memInUseKiB()}
	start := time.Now()
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // host memory in use and VMs holding memory, every second
		defer close(sampled)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			if kib := memInUseKiB(); kib > r.memMaxKiB {
				r.memMaxKiB, r.memMaxAt = kib, time.Since(start)
			}
			if avail := meminfo()["MemAvailable"]; avail < densityFloorKiB && r.stopped.Load() == nil {
				why := fmt.Sprintf("stopped early after %s: MemAvailable %s, below the bench's floor of %s",
					time.Since(start).Round(time.Second), diskBenchGiB(avail<<10), diskBenchGiB(densityFloorKiB<<10))
				r.stopped.Store(&why)
			}
			if free, err := vm.FreeSpace(b.d.dataDir); err == nil && free < densityDiskFloor && r.stopped.Load() == nil {
				why := fmt.Sprintf("stopped early after %s: %s free on the data dir's filesystem, below the bench's floor of %s",
					time.Since(start).Round(time.Second), diskBenchGiB(free), diskBenchGiB(densityDiskFloor))
				r.stopped.Store(&why)
			}
			if vms, err := b.c.ListVMs(ctx); err == nil {
				n := 0
				for _, v := range vms {
					if v.State != api.StateStopped && v.State != api.StateSuspended && v.State != api.StateCrashed {
						n++
					}
				}
				r.runningPeak = max(r.runningPeak, n)
			}
			r.samples++
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	b.densityCreate(ctx, r, o)
	b.densityVisit(ctx, r)
	close(stop)
	<-sampled

	r.idleSuspends = b.logCount("suspending an idle vm")
	r.earlySuspends = b.logCount("suspending an idle vm early: the host needs its memory")
	r.wakes = b.logCount("vm woken")
	r.wakeFails = b.logCount("vm wake failed; it is stopped, its disk intact")
	logLines(b.d.logPath, func(line string) {
		if logField(line, "msg") == "waker: request forwarded" {
			if d, err := time.ParseDuration(logField(line, "waited")); err == nil {
				r.wakeShare = append(r.wakeShare, d)
			}
		}
	})
	r.diskKiB = diskUsedKiB(filepath.Join(b.d.dataDir, "vms"))

	if err := printRows(w, densityRows(r, o, budget)); err != nil {
		return err
	}
	notes := []string{
		fmt.Sprintf("setup: a real fcm daemon (--hypervisor qemu --suspend on --memory-reserve %d --disk-overcommit %g) behind Caddy with Pebble as its ACME CA, in the bench's own namespace; VMs' memory budget: MemTotal %d MiB less the reserve = %d MiB (min of %d MiB and the host's memory)",
			reserve, overcommit, totalMiB, totalMiB-reserve, o.budgetMiB),
		fmt.Sprintf("the VMs: %d MiB, 1 vCPU, 1 GiB disk, minimal image %s, --suspend-after %s, created 2 at a time through the API (each create returns once the guest is up and its route applied); the guest's placeholder on port %d names the VM",
			densityMemory, imageID(b.img), api.FormatSuspendAfter(o.suspendAfter), healPort),
		"then each VM in creation order: one GET of its URL with curl (a new process and connection, TLS through Caddy), answered 200 with that VM's page; a waking request is one to a VM that was suspended (or on its way) just before",
		"host memory in use: MemTotal - MemAvailable from /proc/meminfo every second from the first create to the last request, the whole host's (other work on it included; guest RAM is a shared file mapping, page cache the kernel can write back)",
		fmt.Sprintf("machine: %d cores (%s), MemTotal %s; load average %s at the start, %s at the end (the host is shared: other work slows TCG)",
			runtime.NumCPU(), cpuModel(), memTotalString(), load, loadAvg()),
	}
	return printNotes(w, notes)
}

// densityCreate creates o.n VMs two at a time, saying how far it got now
// and then on stderr.
func (b *sleepBench) densityCreate(ctx context.Context, r *densityResult, o densityOpts) {
	names := make([]string, o.n)
	for i := range names {
		names[i] = fmt.Sprintf("d-%03d", i+1)
	}
	var mu sync.Mutex
	done := map[string]bool{}
	t := time.Now()
	eachAtOnce(names, 2, func(name string) error {
		if why := r.stopped.Load(); why != nil {
			return fmt.Errorf("not created: %s", *why)
		}
		s := time.Now()
		_, err := b.c.CreateVM(ctx, api.CreateVMRequest{Name: name, MemoryMiB: densityMemory, DiskBytes: densityDisk,
			Port: healPort, SuspendAfter: api.FormatSuspendAfter(o.suspendAfter)}, nil)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			r.createErrs = append(r.createErrs, name+": "+err.Error())
		} else {
			done[name] = true
			r.createDur = append(r.createDur, time.Since(s))
		}
		if n := len(done) + len(r.createErrs); n%10 == 0 {
			fmt.Fprintf(os.Stderr, "density: %d of %d creates done (%d failed) after %s, host memory in use %s\n",
				n, o.n, len(r.createErrs), time.Since(t).Round(time.Second), diskBenchGiB(memInUseKiB()<<10))
		}
		return err
	})
	r.createTook = time.Since(t)
	for _, name := range names {
		if done[name] {
			r.created = append(r.created, name)
		}
	}
}

// densityVisit requests each created VM's URL once, in creation order.
func (b *sleepBench) densityVisit(ctx context.Context, r *densityResult) {
	t := time.Now()
	for i, name := range r.created {
		if why := r.stopped.Load(); why != nil {
			r.failures = append(r.failures, fmt.Sprintf("%s and %d more not requested: %s", name, len(r.created)-i-1, *why))
			break
		}
		v, err := b.c.GetVM(ctx, name)
		if err != nil {
			r.failures = append(r.failures, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		sleeping := v.State == api.StateSuspended || v.State == api.StateSuspending || v.State == api.StateWaking
		res, err := b.curl(b.url(name), time.Minute)
		switch {
		case err != nil:
			r.failures = append(r.failures, fmt.Sprintf("%s (%s): %v", name, v.State, err))
		case !res.page(name):
			r.failures = append(r.failures, fmt.Sprintf("%s (%s): status %d, %.120q", name, v.State, res.code, res.body))
		default:
			r.answered++
			if sleeping {
				r.woke++
				r.wakeTotal = append(r.wakeTotal, res.total)
			} else {
				r.wasRunning++
				r.otherTotal = append(r.otherTotal, res.total)
			}
		}
		if (i+1)%20 == 0 {
			fmt.Fprintf(os.Stderr, "density: %d of %d requested (%d answered) after %s\n", i+1, len(r.created), r.answered, time.Since(t).Round(time.Second))
		}
	}
	r.visitTook = time.Since(t)
}

// diskUsedKiB is the host blocks the files under dir take, in KiB.
func diskUsedKiB(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n >> 10
}

func densityRows(r *densityResult, o densityOpts, budgetMiB int) []targetRow {
	createDetail := fmt.Sprintf("in %s; a create (boot to SSH, route applied) %s", diskBenchDur(r.createTook), durs(r.createDur))
	if len(r.createErrs) > 0 {
		createDetail += fmt.Sprintf("; %d failed, first: %s", len(r.createErrs), r.createErrs[0])
	}
	var rows []targetRow
	if why := r.stopped.Load(); why != nil {
		rows = append(rows, targetRow{"density: the run", "stopped", "complete", "MISS", *why})
	}
	rows = append(rows, []targetRow{
		{fmt.Sprintf("density: VMs of %d MiB created, 2 at a time", densityMemory), fmt.Sprintf("%d of %d", len(r.created), o.n),
			strconv.Itoa(o.n), verdict(len(r.created) == o.n), createDetail},
	}...)
	visitDetail := fmt.Sprintf("in %s: %d woke for the request, %d were running already", diskBenchDur(r.visitTook), r.woke, r.wasRunning)
	if len(r.failures) > 0 {
		visitDetail += fmt.Sprintf("; %d not answered with the VM's page, first: %s", len(r.failures), strings.Join(r.failures[:min(3, len(r.failures))], "; "))
	}
	rows = append(rows, targetRow{"density: each VM answered by URL in turn (200, its page)", fmt.Sprintf("%d of %d", r.answered, o.n),
		"all", verdict(r.answered == o.n && o.n > 0), visitDetail})
	if len(r.wakeTotal) > 0 {
		share := "no waker lines"
		if len(r.wakeShare) > 0 {
			share = fmt.Sprintf("p50 %s, p99 %s", diskBenchDur(percentile(r.wakeShare, 0.5)), diskBenchDur(percentile(r.wakeShare, 0.99)))
		}
		rows = append(rows,
			targetRow{"density: the waking request, p50 (curl total, via Caddy)", diskBenchDur(percentile(r.wakeTotal, 0.5)), "report", "-",
				fmt.Sprintf("%s; fcm's share (waker: request in -> forwarded) %s", durs(r.wakeTotal), share)},
			targetRow{"density: the waking request, p99", diskBenchDur(percentile(r.wakeTotal, 0.99)), "report", "-",
				fmt.Sprintf("n=%d; requests to VMs that were running: %s", len(r.wakeTotal), durs(r.otherTotal))})
	}
	maxGiB := float64(r.memMaxKiB) / (1 << 20)
	rows = append(rows, targetRow{"density: host memory in use (MemTotal - MemAvailable), max", diskBenchGiB(r.memMaxKiB << 10),
		fmt.Sprintf("< %s (budget)", diskBenchGiB(int64(budgetMiB)<<20)), verdict(maxGiB*1024 < float64(budgetMiB) && r.samples > 0),
		fmt.Sprintf("%s at the first create; the max %s after it; %d samples, one a second", diskBenchGiB(r.memStartKiB<<10), diskBenchDur(r.memMaxAt), r.samples)})
	rows = append(rows, targetRow{"density: VMs holding memory at once, peak", strconv.Itoa(r.runningPeak), "report", "-",
		fmt.Sprintf("GET /v1/vms every second (not stopped, suspended or crashed); daemon log: %d idle suspends, %d early for memory, %d wakes, %d wakes failed; the VMs' directories take %s on the host (memory files, disks, swap)",
			r.idleSuspends, r.earlySuspends, r.wakes, r.wakeFails, diskBenchGiB(r.diskKiB<<10))})
	return rows
}
