package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
)

// The self-healing bench's daemon: a bridge, subnet and port of its own in the
// bench's namespace.
const (
	healVMs    = 20
	healMemory = api.MinMemoryMiB
	healBridge = "fcmh0"
	healSubnet = "172.23.0.0/24"
	healListen = "127.0.0.1:17790"
	healPort   = 3000
	goalNotice = time.Second // the issue: a death is noticed within a second
)

// runHealBench measures the issue's self-healing targets with a real `fcm
// daemon`: healVMs VMs each serving a git-pushed app, then one's hypervisor
// killed (time until its app answers again, and until the daemon recorded the
// death), then a simulated host restart (time until every app answers again,
// and how many VMs booted at once against --boot-concurrency). One table.
func runHealBench(ctx context.Context, w io.Writer) error {
	fcmBin := os.Getenv("FCM_BIN")
	if fcmBin == "" {
		return errors.New("FCM_BIN must name the fcm binary to run as the daemon (make bench sets it)")
	}
	img := envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image")
	dataDir, err := os.MkdirTemp("", "fcm-bh-") // short: VM sockets live under it
	if err != nil {
		return err
	}
	bound := vm.DefaultBootConcurrency()
	d := &healDaemon{bin: fcmBin, dataDir: dataDir, args: []string{"daemon", "--data-dir", dataDir,
		"--listen", healListen, "--hypervisor", "qemu", "--bridge", healBridge, "--subnet", healSubnet,
		"--kernel", filepath.Join(img, image.KernelFile), "--initrd", filepath.Join(img, image.InitrdFile),
		"--rootfs", filepath.Join(img, image.RootfsFile), "--caddy-admin", "off", "--git-listen", "off",
		"--boot-concurrency", strconv.Itoa(bound)}}
	defer d.cleanup()
	load := loadAvg()
	if err := d.start(ctx); err != nil {
		return err
	}
	c := d.client()

	// Setup, not measured: the VMs, two at a time, and an app pushed to each.
	setup := time.Now()
	names := make([]string, healVMs)
	for i := range names {
		names[i] = fmt.Sprintf("heal-%02d", i+1)
	}
	if err := eachAtOnce(names, 2, func(name string) error {
		_, err := c.CreateVM(ctx, api.CreateVMRequest{Name: name, MemoryMiB: healMemory, DiskBytes: 1 << 30, Port: healPort}, nil)
		return err
	}); err != nil {
		return fmt.Errorf("create: %w\n%s", err, d.tail())
	}
	created := time.Since(setup)
	ips, err := d.deployAll(ctx, c, names)
	if err != nil {
		return err
	}
	deployed := time.Since(setup) - created

	var rows []targetRow
	kill, err := killOne(ctx, c, names[0], ips[names[0]])
	if err != nil {
		rows = append(rows, errorRow("hypervisor kill -9: app answers again", "report", err))
	} else {
		rows = append(rows, kill.rows()...)
	}
	restart, err := d.hostRestart(ctx, names, ips)
	if err != nil {
		rows = append(rows, errorRow(fmt.Sprintf("host restart, %d VMs with apps: every app answers", healVMs), "report", err))
	} else {
		rows = append(rows, restart.rows(bound)...)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tMEASURED\tGOAL\tRESULT\tDETAIL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.target, r.measured, r.goal, r.result, r.detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	notes := []string{
		fmt.Sprintf("setup (not measured): %d VMs (%d MiB, 1 vCPU, minimal image %s) created 2 at a time in %s, a one-line Procfile app (python3 -m http.server) git-pushed to each in turn in %s",
			healVMs, healMemory, imageID(img), diskBenchDur(created), diskBenchDur(deployed)),
		"host restart simulated: kill -9 of the daemon and every hypervisor of its data dir, their cgroups removed, fcm's bridge, taps and nft tables (inet fcm, bridge fcm-l2) deleted, a new boot id in <data-dir>/boot_id (as a reboot changes the kernel's), the daemon started again with the same flags",
		fmt.Sprintf("an app answers: GET http://<vm ip>:%d/ from the bench's namespace returns 200 with that VM's page (no Caddy)", healPort),
		fmt.Sprintf("machine: %d cores (%s); load average %s at the start, %s at the end (the host is shared: other work slows TCG boots)",
			runtime.NumCPU(), cpuModel(), load, loadAvg()),
	}
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, "- "+n); err != nil {
			return err
		}
	}
	return nil
}

// eachAtOnce runs do for every name, n at a time, and returns the first error.
func eachAtOnce(names []string, n int, do func(string) error) error {
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := do(name); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// deployAll pushes a one-line Procfile app to each VM in turn (its page names
// it) and waits until it answers; it returns each VM's address.
func (d *healDaemon) deployAll(ctx context.Context, c *client.Client, names []string) (map[string]string, error) {
	work, err := os.MkdirTemp("", "fcm-bench-heal-app-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if err := gitIn(work, "init", "-q", "-b", "main"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "Procfile"), []byte("web: python3 -m http.server 3000\n"), 0o644); err != nil {
		return nil, err
	}
	ips := map[string]string{}
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(work, "index.html"), []byte(appPage(name)), 0o644); err != nil {
			return nil, err
		}
		if err := gitIn(work, "add", "-A", "."); err != nil {
			return nil, err
		}
		if err := gitIn(work, "commit", "-q", "-m", name); err != nil {
			return nil, err
		}
		remote := "http://fcm:" + c.Token + "@" + healListen + "/git/" + name + ".git"
		if err := gitIn(work, "push", "-q", "-f", remote, "main"); err != nil {
			return nil, fmt.Errorf("push to %s: %w\n%s", name, err, d.tail())
		}
		v, err := c.GetVM(ctx, name)
		if err != nil {
			return nil, err
		}
		ips[name] = v.IP
		if _, err := waitApp(ctx, v.IP, name, time.Now().Add(time.Minute)); err != nil {
			return nil, err
		}
	}
	return ips, nil
}

// appPage is the page VM name's app serves.
func appPage(name string) string { return "<h1>healed " + name + "</h1>\n" }

// answers says whether VM name's app at ip answers GET / with 200 and its page.
func answers(ip, name string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/", ip, healPort))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == http.StatusOK && string(body) == appPage(name)
}

// waitApp polls VM name's app every 50 ms until it answers or deadline
// passes, and returns when it first answered.
func waitApp(ctx context.Context, ip, name string, deadline time.Time) (time.Time, error) {
	for {
		if answers(ip, name) {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: its app at http://%s:%d/ did not answer", name, ip, healPort)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// killResult is what killing one VM's hypervisor measured.
type killResult struct {
	name             string
	answered, notice time.Duration // from the kill
	oldPID, newPID   int
	died, restarted  string // the events' details
}

// killOne kills VM name's hypervisor with SIGKILL and times until its app
// answers again and until the daemon's "died" event.
func killOne(ctx context.Context, c *client.Client, name, ip string) (*killResult, error) {
	v, err := c.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if v.State != api.StateRunning || v.PID == 0 {
		return nil, fmt.Errorf("%s is %s (pid %d) before the kill", name, v.State, v.PID)
	}
	r := &killResult{name: name, oldPID: v.PID}
	killed := time.Now()
	if err := syscall.Kill(v.PID, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("kill %d: %w", v.PID, err)
	}
	at, err := waitApp(ctx, ip, name, killed.Add(3*time.Minute))
	if err != nil {
		return nil, err
	}
	r.answered = at.Sub(killed)
	if v, err = c.GetVM(ctx, name); err != nil {
		return nil, err
	}
	r.newPID = v.PID
	for _, e := range v.Events {
		switch {
		case e.Kind == "died" && !e.At.Before(killed.Add(-time.Second)) && r.died == "":
			r.died, r.notice = e.Detail, e.At.Sub(killed)
		case e.Kind == "restarted" && r.died != "":
			r.restarted = e.Detail
		}
	}
	if r.died == "" {
		return nil, fmt.Errorf("%s answers again (pid %d -> %d) but has no died event after the kill: %+v", name, r.oldPID, r.newPID, v.Events)
	}
	return r, nil
}

func (r *killResult) rows() []targetRow {
	return []targetRow{
		{"hypervisor kill -9: app answers again", diskBenchDur(r.answered), "report", "-",
			fmt.Sprintf("%s: QEMU pid %d killed, pid %d answers; events: died %q, restarted %q", r.name, r.oldPID, r.newPID, r.died, r.restarted)},
		{"hypervisor kill -9: daemon noticed (died event)", diskBenchDur(r.notice), "<= " + goalNotice.String(), verdict(r.notice <= goalNotice),
			"from the kill to the timestamp of the vm's died event; the restart follows after the first backoff (1s)"},
	}
}

// logLines calls fn with each line of the file at path.
func logLines(path string, fn func(string)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fn(sc.Text())
	}
}

// logField is the value of key=... in a slog text line ("" if none).
func logField(line, key string) string {
	i := strings.Index(" "+line, " "+key+"=") // i: where key starts in line
	if i < 0 {
		return ""
	}
	rest := line[i+len(key)+1:]
	if strings.HasPrefix(rest, `"`) {
		if s, err := strconv.QuotedPrefix(rest); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	v, _, _ := strings.Cut(rest, " ")
	return v
}

// maxOverlap is the most intervals open at once; an interval is [start, end).
func maxOverlap(starts, ends []time.Time) int {
	type edge struct {
		at time.Time
		d  int
	}
	var es []edge
	for _, t := range starts {
		es = append(es, edge{t, 1})
	}
	for _, t := range ends {
		es = append(es, edge{t, -1})
	}
	sort.Slice(es, func(i, j int) bool {
		if es[i].at.Equal(es[j].at) {
			return es[i].d < es[j].d // an end before a start at the same instant
		}
		return es[i].at.Before(es[j].at)
	})
	cur, peak := 0, 0
	for _, e := range es {
		cur += e.d
		peak = max(peak, cur)
	}
	return peak
}

// cgroupsOf points the cgroup package at dataDir's daemon's VM cgroups.
func cgroupsOf(dataDir string) { cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir)) }
