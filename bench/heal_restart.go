package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/client"
)

// healDaemon is a real `fcm daemon` process the self-healing bench starts,
// kills and starts again with the same flags.
type healDaemon struct {
	bin, dataDir string
	args         []string
	cmd          *exec.Cmd
	exited       chan struct{}
	logPath      string
	starts       int
}

// start runs the daemon, its log in <data-dir>/daemon-<n>.log, and waits
// until it answers /health.
func (d *healDaemon) start(ctx context.Context) error {
	d.starts++
	d.logPath = filepath.Join(d.dataDir, fmt.Sprintf("daemon-%d.log", d.starts))
	logf, err := os.Create(d.logPath)
	if err != nil {
		return err
	}
	d.cmd = exec.Command(d.bin, d.args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	err = d.cmd.Start()
	logf.Close()
	if err != nil {
		return err
	}
	exited := make(chan struct{})
	d.exited = exited
	go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(d.cmd)
	deadline := time.Now().Add(time.Minute)
	for {
		if resp, err := http.Get("http://" + healListen + "/health"); err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the daemon exited at start:\n%s", d.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not answer /health within a minute:\n%s", d.tail())
		}
	}
}

// running says whether the daemon process runs.
func (d *healDaemon) running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// client is an admin client of the daemon.
func (d *healDaemon) client() *client.Client {
	token, _ := os.ReadFile(filepath.Join(d.dataDir, ".token"))
	return &client.Client{Host: "http://" + healListen, Token: strings.TrimSpace(string(token))}
}

// tail is the end of the daemon's current log.
func (d *healDaemon) tail() string {
	data, _ := os.ReadFile(d.logPath)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return "daemon log (" + d.logPath + "):\n" + string(data)
}

// restartResult is what the simulated host restart measured.
type restartResult struct {
	health      time.Duration   // from the daemon's start to /health
	answered    []time.Duration // per VM, from the daemon's start to its app's first 200
	apiPeak     int             // most VMs in state starting in one GET /v1/vms
	samples     int
	logPeak     int // most VMs between "restarting vm" and its end in the daemon log
	logRestarts int
	hostEvents  int // VMs with a host-restart event
}

// hostRestart does to the daemon and its VMs what a host's crash and reboot
// would, starts the daemon again as systemd would, and measures until every
// app answers.
func (d *healDaemon) hostRestart(ctx context.Context, names []string, ips map[string]string) (*restartResult, error) {
	d.cmd.Process.Kill()
	<-d.exited
	if err := killHypervisors(d.dataDir); err != nil {
		return nil, err
	}
	resetNetwork()
	// A reboot gives the kernel a new boot id; the daemon compares it with
	// the one it wrote.
	if err := os.WriteFile(filepath.Join(d.dataDir, "boot_id"), []byte("simulated-reboot-"+strconv.FormatInt(time.Now().UnixNano(), 10)+"\n"), 0o644); err != nil {
		return nil, err
	}

	r := &restartResult{}
	start := time.Now()
	if err := d.start(ctx); err != nil {
		return nil, err
	}
	r.health = time.Since(start)
	c := d.client()
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // how many VMs the API shows booting, every 100 ms
		defer close(sampled)
		for {
			if vms, err := c.ListVMs(ctx); err == nil {
				n := 0
				for _, v := range vms {
					if v.State == api.StateStarting {
						n++
					}
				}
				r.apiPeak, r.samples = max(r.apiPeak, n), r.samples+1
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, err := waitApp(ctx, ips[name], name, start.Add(15*time.Minute))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			r.answered = append(r.answered, at.Sub(start))
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d of %d apps never answered after the restart: %w\n%s", len(errs), len(names), errors.Join(errs...), d.tail())
	}
	r.logPeak, r.logRestarts = bootsInLog(d.logPath, time.Now())
	vms, err := c.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	for _, v := range vms {
		for _, e := range v.Events {
			if e.Kind == "host-restart" && !e.At.Before(start) {
				r.hostEvents++
				break
			}
		}
	}
	return r, nil
}

// bootsInLog reads a daemon log's restarts: each from its "restarting vm"
// line to its "vm restarted" or "vm restart failed" line (or end, if none),
// and returns the most at once and how many there were.
func bootsInLog(path string, end time.Time) (peak, n int) {
	open := map[string]time.Time{}
	var starts, ends []time.Time
	logLines(path, func(line string) {
		at, err := time.Parse(time.RFC3339Nano, logField(line, "time"))
		if err != nil {
			return
		}
		name := logField(line, "name")
		switch logField(line, "msg") {
		case "restarting vm":
			open[name] = at
			starts = append(starts, at)
		case "vm restarted", "vm restart failed":
			if _, ok := open[name]; ok {
				delete(open, name)
				ends = append(ends, at)
			}
		}
	})
	for range open {
		ends = append(ends, end)
	}
	return maxOverlap(starts, ends), len(starts)
}

func (r *restartResult) rows(bound int) []targetRow {
	all := percentile(r.answered, 1)
	first := percentile(r.answered, 0)
	med := percentile(r.answered, 0.5)
	peak := max(r.apiPeak, r.logPeak)
	boots := targetRow{"host restart: peak boots at once", strconv.Itoa(peak), fmt.Sprintf("<= %d (--boot-concurrency)", bound),
		verdict(peak <= bound && r.logRestarts > 0),
		fmt.Sprintf("daemon log: at most %d of %d restarts between \"restarting vm\" and \"vm restarted\"; GET /v1/vms every 100 ms: at most %d in state starting (%d samples)",
			r.logPeak, r.logRestarts, r.apiPeak, r.samples)}
	if r.logRestarts == 0 {
		boots.detail = "the daemon log has no \"restarting vm\" line: the VMs were not booted by its healer; " + boots.detail
	}
	return []targetRow{
		{fmt.Sprintf("host restart, %d VMs with apps: every app answers", len(r.answered)), diskBenchDur(all), "report", "-",
			fmt.Sprintf("from the daemon's start (/health after %s): first app %s, median %s; %d of %d VMs show a host-restart event",
				diskBenchDur(r.health), diskBenchDur(first), diskBenchDur(med), r.hostEvents, len(r.answered))},
		boots,
	}
}

// procsMentioning lists the live processes whose command line contains s.
func procsMentioning(s string) []int {
	var pids []int
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		cmdline, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(stat), ") Z ") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killHypervisors kills with SIGKILL every process of dataDir's VMs (found by
// command line and by cgroup) and removes their cgroups, as a host's crash
// and reboot would.
func killHypervisors(dataDir string) error {
	cgroupsOf(dataDir)
	deadline := time.Now().Add(20 * time.Second)
	for {
		pids := procsMentioning(filepath.Join(dataDir, "vms") + "/")
		ids, _ := cgroup.List()
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, id := range ids {
			cgroup.Kill(id)
		}
		if len(pids) == 0 {
			removed := 0
			for _, id := range ids {
				if cgroup.Remove(id) == nil {
					removed++
				}
			}
			if removed == len(ids) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hypervisors of %s still alive (pids %v) or cgroups left (%v) after 20s", dataDir, pids, ids)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// resetNetwork deletes what a reboot loses of fcm's network in the bench's
// namespace: the bridge, the taps and the nftables tables.
func resetNetwork() {
	exec.Command("ip", "link", "del", healBridge).Run()
	links, _ := net.Interfaces()
	for _, l := range links {
		if strings.HasPrefix(l.Name, "tap_") {
			exec.Command("ip", "link", "del", l.Name).Run()
		}
	}
	exec.Command("nft", "delete", "table", "inet", "fcm").Run()
	exec.Command("nft", "delete", "table", "bridge", "fcm-l2").Run()
}

// cleanup destroys the bench's VMs through the daemon if it runs, stops it,
// and removes whatever is left: processes, cgroups, network, data dir.
func (d *healDaemon) cleanup() {
	if d.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c := d.client()
		if vms, err := c.ListVMs(ctx); err == nil {
			for _, v := range vms {
				c.DestroyVM(ctx, v.Name)
			}
		}
		cancel()
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	killHypervisors(d.dataDir)
	cgroup.RemoveParent()
	resetNetwork()
	os.RemoveAll(d.dataDir)
}
