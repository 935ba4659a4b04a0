package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
)

// The suspend and density benches' edge: every name resolves to this address
// on the namespace's lo, where Caddy serves.
const sleepEdgeAddr = "10.125.0.1"

// Goals of the suspend bench (issue 22).
const (
	goalSuspend    = 50 * time.Millisecond
	goalWake       = 25 * time.Millisecond
	goalWakeRatio  = 2.0
	sleepColdBoots = 3 // cold boots per guest size, beside the wakes
)

// sleepSizes are the guest sizes whose wakes are compared, in MiB.
var sleepSizes = []int{api.MinMemoryMiB, 2048}

// sleepBench is a real `fcm daemon` with --suspend on behind a real Caddy
// (with Pebble as its ACME CA), in the bench's namespace.
type sleepBench struct {
	d       *healDaemon
	env     *edgetest.Env
	c       *client.Client
	edgeDir string
	img     string
}

// startSleepBench starts Caddy, Pebble and the daemon (--suspend on, routed
// through Caddy, extra flags added). close undoes it all.
func startSleepBench(ctx context.Context, subnet string, extra ...string) (*sleepBench, error) {
	fcmBin := os.Getenv("FCM_BIN")
	if fcmBin == "" {
		return nil, errors.New("FCM_BIN must name the fcm binary to run as the daemon (make bench sets it)")
	}
	b := &sleepBench{img: envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image")}
	var err error
	if b.edgeDir, err = os.MkdirTemp("", "fcm-bench-sleep-edge-"); err != nil {
		return nil, err
	}
	if b.env, err = edgetest.Start(b.edgeDir, sleepEdgeAddr); err != nil {
		os.RemoveAll(b.edgeDir)
		return nil, err
	}
	dataDir, err := os.MkdirTemp("", "fcm-bs-") // short: VM sockets live under it
	if err != nil {
		b.close()
		return nil, err
	}
	args := []string{"daemon", "--data-dir", dataDir,
		"--listen", healListen, "--hypervisor", "qemu", "--bridge", healBridge, "--subnet", subnet,
		"--kernel", filepath.Join(b.img, image.KernelFile), "--initrd", filepath.Join(b.img, image.InitrdFile),
		"--rootfs", filepath.Join(b.img, image.RootfsFile), "--git-listen", "off",
		"--caddy-admin", b.env.Admin(), "--domain", benchDomain, "--acme-ca", edgetest.ACMEDir,
		"--acme-ca-root", b.env.CARoot, "--acme-email", "ops@" + benchDomain, "--suspend", "on"}
	b.d = &healDaemon{bin: fcmBin, dataDir: dataDir, args: append(args, extra...)}
	if err := b.d.start(ctx); err != nil {
		b.close()
		return nil, err
	}
	b.c = b.d.client()
	return b, nil
}

func (b *sleepBench) close() {
	if b.d != nil {
		b.d.cleanup()
	}
	if b.env != nil {
		b.env.Close()
	}
	os.RemoveAll(b.edgeDir)
}

// url is VM name's public URL.
func (b *sleepBench) url(name string) string { return "https://" + name + "." + benchDomain + "/" }

// vmDir is VM id's directory under the daemon's data dir.
func (b *sleepBench) vmDir(id string) string { return filepath.Join(b.d.dataDir, "vms", id) }

// curlResult is one request with the real curl: its status, body and
// curl's own timings.
type curlResult struct {
	code              int
	body              string
	total, tls, first time.Duration // whole request, TLS done, first byte
}

// page says whether the answer is VM name's page (the guest's placeholder
// names its host).
func (r curlResult) page(name string) bool {
	return r.code == 200 && strings.Contains(r.body, "<h1>"+name+" is running</h1>")
}

// curl fetches url with the real curl in a new process (a new connection),
// trusting Pebble's root and resolving the name to Caddy's address.
func (b *sleepBench) curl(url string, maxTime time.Duration) (curlResult, error) {
	host := strings.SplitN(strings.SplitN(url, "://", 2)[1], "/", 2)[0]
	out, err := exec.Command("curl", "-sS", "--max-time", strconv.Itoa(int(maxTime.Seconds())),
		"--cacert", b.env.RootFile, "--resolve", host+":443:"+sleepEdgeAddr,
		"-w", "\n%{http_code} %{time_total} %{time_appconnect} %{time_starttransfer}", url).CombinedOutput()
	s := string(out)
	i := strings.LastIndex(s, "\n")
	if err != nil || i < 0 {
		return curlResult{}, fmt.Errorf("curl %s: %v: %s", url, err, strings.TrimSpace(s))
	}
	r := curlResult{body: s[:i]}
	f := strings.Fields(s[i+1:])
	if len(f) != 4 {
		return r, fmt.Errorf("curl %s: timings %q", url, s[i+1:])
	}
	r.code, _ = strconv.Atoi(f[0])
	secs := func(v string) time.Duration {
		x, _ := strconv.ParseFloat(v, 64)
		return time.Duration(x * float64(time.Second))
	}
	r.total, r.tls, r.first = secs(f[1]), secs(f[2]), secs(f[3])
	return r, nil
}

// waitPage curls url until it answers with VM name's page, for at most d,
// and returns when it did (from start).
func (b *sleepBench) waitPage(ctx context.Context, name string, start time.Time, d time.Duration) (time.Duration, error) {
	var last string
	for {
		r, err := b.curl(b.url(name), 10*time.Second)
		if err == nil && r.page(name) {
			return time.Since(start), nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("status %d: %.200q", r.code, r.body)
		}
		if time.Since(start) > d {
			return 0, fmt.Errorf("%s: no page within %s (last: %s)", b.url(name), d, last)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitRoute polls Caddy's config until VM name's route goes to the daemon's
// waker (sleeping) or straight to the VM (not), and returns how long it took.
func (b *sleepBench) waitRoute(ctx context.Context, name string, sleeping bool) (time.Duration, error) {
	start := time.Now()
	hc := b.env.AdminClient()
	var last string
	for {
		resp, err := hc.Get(b.env.AdminURL() + "/id/" + edge.RouteID(name))
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(data)
			waker := strings.Contains(last, edge.WakeHeader)
			if resp.StatusCode == 200 && waker == sleeping && strings.Contains(last, "reverse_proxy") {
				return time.Since(start), nil
			}
		}
		if time.Since(start) > 30*time.Second {
			return 0, fmt.Errorf("the route of %s in Caddy did not change within 30s (want to the waker: %v): %.300s", name, sleeping, last)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// logDurs are the durations in field key of the daemon's log lines with
// message msg about VM name (named by attr), in order.
func (b *sleepBench) logDurs(msg, attr, name, key string) []time.Duration {
	var out []time.Duration
	logLines(b.d.logPath, func(line string) {
		if logField(line, "msg") != msg || logField(line, attr) != name {
			return
		}
		if d, err := time.ParseDuration(logField(line, key)); err == nil {
			out = append(out, d)
		}
	})
	return out
}

// logCount is how many of the daemon's log lines have message msg.
func (b *sleepBench) logCount(msg string) int {
	n := 0
	logLines(b.d.logPath, func(line string) {
		if logField(line, "msg") == msg {
			n++
		}
	})
	return n
}

// nthLogDur waits (up to 5 s) for the nth (from 0) duration logDurs finds.
func (b *sleepBench) nthLogDur(n int, msg, attr, name, key string) (time.Duration, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ds := b.logDurs(msg, attr, name, key); len(ds) > n {
			return ds[n], nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the daemon log has no %q line for %s (%s=...)\n%s", msg, name, key, b.d.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sizeResult is what the suspend bench measured for one guest size.
type sizeResult struct {
	memMiB                             int
	standbys                           int   // the daemon's --standbys in this run
	standbyRSS                         int64 // KiB, the most a standby QEMU held
	name                               string
	suspendLog, suspendAPI, routeSleep []time.Duration
	guestSync                          []time.Duration // the guest's sync before each suspend
	wakeShare, wakeTook, restore       []time.Duration
	curlTotal, curlTLS, curlFirst      []time.Duration
	runningRSS                         []int64 // KiB, before each suspend
	suspendedRSS                       int64   // KiB, the most any suspended VM's processes had
	gone, cycles                       int     // cycles after which its hypervisor was gone
	coldStart, coldAnswer              []time.Duration
	err                                error
}

// runSuspendBench measures issue 22's suspend and wake targets with a real
// daemon behind a real Caddy: for a 256 MiB and a 2 GiB guest, cycles of
// fcm suspend then a request to its URL (which wakes it), then cold boots
// of the same VMs (fcm stop, fcm start) for comparison. One table.
func runSuspendBench(ctx context.Context, w io.Writer, cycles int) error {
	load := loadAvg()
	b, err := startSleepBench(ctx, healSubnet, "--suspend-after", "off", "--standbys", strconv.Itoa(vm.DefaultStandbys))
	if err != nil {
		return err
	}
	defer b.close()
	setup := time.Now()
	var results []*sizeResult
	for _, mem := range sleepSizes {
		r := &sizeResult{memMiB: mem, name: fmt.Sprintf("nap-%d", mem)}
		results = append(results, r)
		if _, err := b.c.CreateVM(ctx, api.CreateVMRequest{Name: r.name, MemoryMiB: mem, DiskBytes: 1 << 30,
			Port: healPort, SuspendAfter: "off"}, nil); err != nil {
			return fmt.Errorf("create %s: %w\n%s", r.name, err, b.d.tail())
		}
		// Its certificate from Pebble, and the guest's page, before any timing.
		if _, err := b.waitPage(ctx, r.name, time.Now(), 2*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, b.d.tail())
		}
	}
	setupTook := time.Since(setup)
	for _, r := range results {
		r.standbys = vm.DefaultStandbys
		for i := 0; i < cycles && r.err == nil; i++ {
			r.err = b.cycle(ctx, r, i)
		}
	}
	// Again with QEMU started on the wake's path (--standbys 0): the daemon
	// restarted with that flag, the same VMs.
	if err := b.restartDaemon(ctx, "--standbys", "0"); err != nil {
		return err
	}
	for _, mem := range sleepSizes {
		r := &sizeResult{memMiB: mem, name: fmt.Sprintf("nap-%d", mem)}
		results = append(results, r)
		for i := 0; i < cycles && r.err == nil; i++ {
			r.err = b.cycle(ctx, r, i)
		}
		if r.err == nil {
			r.err = b.coldBoots(ctx, r)
		}
	}

	rows := suspendRows(results)
	if err := printRows(w, rows); err != nil {
		return err
	}
	notes := []string{
		fmt.Sprintf("setup (not measured, %s): a real fcm daemon (--hypervisor qemu --suspend on) behind Caddy with Pebble as its ACME CA, in the bench's own namespace; one VM per size (1 vCPU, minimal image %s, --suspend-after off), its certificate issued and its page served before the first timing",
			diskBenchDur(setupTook), imageID(b.img)),
		fmt.Sprintf("two runs, the same VMs: the daemon with --standbys %d (after a suspend it starts a QEMU waiting under -incoming defer; the cycle waits for it, as a later request would find it), then restarted with --standbys 0 (QEMU started on the wake's path)", vm.DefaultStandbys),
		fmt.Sprintf("a cycle (%d per size and run): wait until Caddy routes the VM straight to it; fcm suspend (API); wait until Caddy routes it to the daemon's waker; one GET of its URL with curl (a new process and connection: DNS via --resolve, TLS, HTTP/2), answered 200 with the VM's page", cycles),
		"fcm's share of a suspend: the daemon log's `vm suspended took=` (QMP stop, device state migrated to a file beside the memory file, QEMU quit and reaped); before it the guest syncs its disks over SSH (`the guest synced its disks took=`, the guest's own work: a new SSH connection under TCG when none is open), which fcm suspend (API) includes; of a wake: the log's `waker: request forwarded waited=` (from the waker getting Caddy's request to forwarding it to the running guest: QEMU started with -incoming defer, device state loaded, cont), `waker: vm woken by a request took=` is the wake alone, `vm woken took=` the manager's restore",
		"host RSS of a suspended VM: the summed VmRSS of every process whose command line has the VM's directory, and of its former QEMU pid if it still lived (0 when none)",
		fmt.Sprintf("cold boot: fcm stop, then fcm start of the same VM (%d per size; the suspend image is discarded on stop), until its URL answers with its page", sleepColdBoots),
		fmt.Sprintf("machine: %d cores (%s), MemTotal %s; load average %s at the start, %s at the end (the host is shared: other work slows TCG)",
			runtime.NumCPU(), cpuModel(), memTotalString(), load, loadAvg()),
	}
	return printNotes(w, notes)
}

// cycle suspends r's VM, checks its hypervisor is gone, and wakes it with a
// request to its URL; i is the cycle's number (from 0).
func (b *sleepBench) cycle(ctx context.Context, r *sizeResult, i int) error {
	v, err := b.c.GetVM(ctx, r.name)
	if err != nil {
		return err
	}
	if v.State != api.StateRunning || v.PID == 0 {
		return fmt.Errorf("%s is %s (pid %d) before suspend %d", r.name, v.State, v.PID, i+1)
	}
	if _, err := b.waitRoute(ctx, r.name, false); err != nil {
		return err
	}
	r.runningRSS = append(r.runningRSS, int64(rssKiB(v.PID)))
	t := time.Now()
	if _, err := b.c.SuspendVM(ctx, r.name); err != nil {
		return fmt.Errorf("suspend %d of %s: %w\n%s", i+1, r.name, err, b.d.tail())
	}
	r.suspendAPI = append(r.suspendAPI, time.Since(t))
	took, err := b.nthLogDur(i, "vm suspended", "name", r.name, "took")
	if err != nil {
		return err
	}
	r.suspendLog = append(r.suspendLog, took)
	if sync, err := b.nthLogDur(i, "the guest synced its disks", "name", r.name, "took"); err == nil {
		r.guestSync = append(r.guestSync, sync)
	}
	dir := b.vmDir(v.ID) + "/"
	if r.standbys > 0 {
		// The daemon starts a standby QEMU for its wake: wait for it, as a
		// request some time later would find it.
		if _, err := b.nthLogDur(i, "standby hypervisor waits for the vm's wake", "name", r.name, "took"); err != nil {
			return err
		}
	}
	var rss int64
	var procs []int
	for _, pid := range procsMentioning(dir) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), "-incoming\x00defer") && pid != v.PID {
			r.standbyRSS = max(r.standbyRSS, int64(rssKiB(pid))) // a standby, not the VM
			continue
		}
		procs = append(procs, pid)
		rss += int64(rssKiB(pid))
	}
	old, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID)) // empty when gone or a zombie
	if !slices.Contains(procs, v.PID) && strings.Contains(string(old), dir) {
		rss += int64(rssKiB(v.PID))
	}
	r.suspendedRSS = max(r.suspendedRSS, rss)
	if len(procs) == 0 && !strings.Contains(string(old), dir) {
		r.gone++
	}
	r.cycles++
	route, err := b.waitRoute(ctx, r.name, true)
	if err != nil {
		return err
	}
	r.routeSleep = append(r.routeSleep, route)

	res, err := b.curl(b.url(r.name), time.Minute)
	if err != nil {
		return fmt.Errorf("wake %d of %s: %w\n%s", i+1, r.name, err, b.d.tail())
	}
	if !res.page(r.name) {
		return fmt.Errorf("wake %d of %s: status %d, body %.300q\n%s", i+1, r.name, res.code, res.body, b.d.tail())
	}
	r.curlTotal = append(r.curlTotal, res.total)
	r.curlTLS = append(r.curlTLS, res.tls)
	r.curlFirst = append(r.curlFirst, res.first)
	for _, x := range []struct {
		msg, attr, key string
		to             *[]time.Duration
	}{
		{"waker: request forwarded", "vm", "waited", &r.wakeShare},
		{"waker: vm woken by a request", "vm", "took", &r.wakeTook},
		{"vm woken", "name", "took", &r.restore},
	} {
		d, err := b.nthLogDur(i, x.msg, x.attr, r.name, x.key)
		if err != nil {
			return err
		}
		*x.to = append(*x.to, d)
	}
	return nil
}

// coldBoots stops and starts r's VM sleepColdBoots times, timing fcm start
// and until its URL answers with its page.
// restartDaemon stops the daemon (SIGTERM: its VMs run on) and starts it
// again with its flags and extra, which override earlier ones.
func (b *sleepBench) restartDaemon(ctx context.Context, extra ...string) error {
	b.d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.d.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the daemon did not exit on SIGTERM\n%s", b.d.tail())
	}
	b.d.args = append(b.d.args, extra...)
	if err := b.d.start(ctx); err != nil {
		return err
	}
	b.c = b.d.client()
	return nil
}

func (b *sleepBench) coldBoots(ctx context.Context, r *sizeResult) error {
	for i := 0; i < sleepColdBoots; i++ {
		if _, err := b.c.StopVM(ctx, r.name); err != nil {
			return fmt.Errorf("stop %s: %w\n%s", r.name, err, b.d.tail())
		}
		t := time.Now()
		if _, err := b.c.StartVM(ctx, r.name, nil); err != nil {
			return fmt.Errorf("start %s: %w\n%s", r.name, err, b.d.tail())
		}
		r.coldStart = append(r.coldStart, time.Since(t))
		d, err := b.waitPage(ctx, r.name, t, 2*time.Minute)
		if err != nil {
			return fmt.Errorf("%w\n%s", err, b.d.tail())
		}
		r.coldAnswer = append(r.coldAnswer, d)
	}
	return nil
}

// durs sums up samples: p50, p90 and max.
func durs(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s, p90 %s, max %s (n=%d)", diskBenchDur(percentile(d, 0.5)), diskBenchDur(percentile(d, 0.9)),
		diskBenchDur(percentile(d, 1)), len(d))
}

// p50 is the median, or 0 without samples.
func p50(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return percentile(d, 0.5)
}

// mode says how r's wakes found QEMU.
func (r *sizeResult) mode() string {
	if r.standbys > 0 {
		return "standby QEMU"
	}
	return "QEMU started on wake"
}

func suspendRows(results []*sizeResult) []targetRow {
	var rows []targetRow
	var suspendAll []time.Duration
	var detail []string
	for _, r := range results {
		suspendAll = append(suspendAll, r.suspendLog...)
		detail = append(detail, fmt.Sprintf("%d MiB (%s): %s, the guest's sync before it p50 %s, fcm suspend (API) p50 %s, then Caddy routes to the waker after p50 %s",
			r.memMiB, r.mode(), durs(r.suspendLog), diskBenchDur(p50(r.guestSync)), diskBenchDur(p50(r.suspendAPI)), diskBenchDur(p50(r.routeSleep))))
	}
	if len(suspendAll) > 0 {
		s := percentile(suspendAll, 0.5)
		rows = append(rows, targetRow{"suspend, fcm's share (daemon log)", diskBenchDur(s), "p50 <= " + diskBenchDur(goalSuspend),
			verdict(s <= goalSuspend), strings.Join(detail, "; ")})
	}
	gone, cycles := 0, 0
	var rss, standbyRSS int64
	var running []string
	for _, r := range results {
		gone, cycles, rss, standbyRSS = gone+r.gone, cycles+r.cycles, max(rss, r.suspendedRSS), max(standbyRSS, r.standbyRSS)
		if len(r.runningRSS) > 0 {
			running = append(running, fmt.Sprintf("%d MiB guest: %s", r.memMiB, diskBenchMiB(percentile64(r.runningRSS, 0.5)<<10)))
		}
	}
	if cycles > 0 {
		rows = append(rows, targetRow{"host RSS of a suspended VM", diskBenchMiB(rss << 10), "0 (no process)", verdict(rss == 0 && gone == cycles),
			fmt.Sprintf("after %d of %d suspends its QEMU pid was gone and no process but a standby had its directory on its command line; RSS of its QEMU while running (p50): %s; a standby QEMU (the last %d suspended VMs keep one) held at most %s",
				gone, cycles, strings.Join(running, ", "), vm.DefaultStandbys, diskBenchMiB(standbyRSS<<10))})
	}
	for _, r := range results {
		if len(r.wakeShare) == 0 {
			continue
		}
		s := percentile(r.wakeShare, 0.5)
		rows = append(rows, targetRow{fmt.Sprintf("wake, fcm's share, %d MiB guest, %s (waker: request in -> forwarded)", r.memMiB, r.mode()), diskBenchDur(s),
			"p50 <= " + diskBenchDur(goalWake), verdict(s <= goalWake),
			fmt.Sprintf("%s; the wake alone (waker) p50 %s; the restore (manager: QEMU start, state, cont) p50 %s",
				durs(r.wakeShare), diskBenchDur(p50(r.wakeTook)), diskBenchDur(p50(r.restore)))})
	}
	for i := 0; i+1 < len(results); i += 2 {
		a, b := results[i], results[i+1]
		if len(a.wakeShare) == 0 || len(b.wakeShare) == 0 {
			continue
		}
		small, big := p50(a.wakeShare), p50(b.wakeShare)
		ratio := float64(big) / float64(max(small, time.Microsecond))
		rows = append(rows, targetRow{fmt.Sprintf("wake, %d MiB vs %d MiB guest, %s (fcm's share, p50)", b.memMiB, a.memMiB, a.mode()),
			fmt.Sprintf("%.2fx", ratio), fmt.Sprintf("<= %.0fx", goalWakeRatio), verdict(ratio <= goalWakeRatio && 1/ratio <= goalWakeRatio),
			fmt.Sprintf("%s vs %s; end to end (curl) p50 %s vs %s", diskBenchDur(big), diskBenchDur(small),
				diskBenchDur(p50(b.curlTotal)), diskBenchDur(p50(a.curlTotal)))})
	}
	for _, r := range results {
		if len(r.curlTotal) == 0 {
			continue
		}
		rows = append(rows, targetRow{fmt.Sprintf("wake, the guest's first answer, %d MiB, %s (curl total, via Caddy)", r.memMiB, r.mode()),
			diskBenchDur(p50(r.curlTotal)), "report", "-",
			fmt.Sprintf("%s; TLS done p50 %s, first byte p50 %s", durs(r.curlTotal), diskBenchDur(p50(r.curlTLS)), diskBenchDur(p50(r.curlFirst)))})
	}
	for _, r := range results {
		if len(r.coldAnswer) == 0 {
			continue
		}
		rows = append(rows, targetRow{fmt.Sprintf("cold boot of the same VM, %d MiB (fcm start -> first answer via Caddy)", r.memMiB),
			diskBenchDur(p50(r.coldAnswer)), "report", "-",
			fmt.Sprintf("%s; fcm start returned (booted, SSH up) after p50 %s; against the wake's end to end p50 %s",
				durs(r.coldAnswer), diskBenchDur(p50(r.coldStart)), diskBenchDur(p50(r.curlTotal)))})
	}
	for _, r := range results {
		if r.err != nil {
			rows = append(rows, errorRow(fmt.Sprintf("%d MiB guest, %s: suspend/wake cycles and cold boots", r.memMiB, r.mode()), "no error", r.err))
		}
	}
	return rows
}

// printRows prints a TARGET MEASURED GOAL RESULT DETAIL table.
func printRows(w io.Writer, rows []targetRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tMEASURED\tGOAL\tRESULT\tDETAIL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.target, r.measured, r.goal, r.result, r.detail)
	}
	return tw.Flush()
}

// printNotes prints the table's notes, one "- " line each.
func printNotes(w io.Writer, notes []string) error {
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, "- "+n); err != nil {
			return err
		}
	}
	return nil
}

// meminfo reads /proc/meminfo's fields in KiB.
func meminfo() map[string]int64 {
	out := map[string]int64{}
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = n
		}
	}
	return out
}

// memInUseKiB is the host's memory in use: MemTotal less MemAvailable.
func memInUseKiB() int64 {
	m := meminfo()
	return m["MemTotal"] - m["MemAvailable"]
}

func memTotalString() string { return diskBenchGiB(meminfo()["MemTotal"] << 10) }

// diskBenchGiB formats a byte count in GiB.
func diskBenchGiB(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }
