package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/network"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

// listResult is what timing GET /v1/vms measured.
type listResult struct {
	vms      int
	bytes    int64 // one response's body
	p50, p99 time.Duration
	n        int // requests timed
}

// runListBench prints the time of GET /v1/vms with 1,000 VM records.
func runListBench(w io.Writer) error {
	r, err := measureList()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "REQUEST\tVMS\tRESPONSE\tP50\tP99\tN\n")
	fmt.Fprintf(tw, "GET /v1/vms\t%d\t%d KiB\t%s\t%s\t%d\n", r.vms, r.bytes>>10,
		r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.n)
	return tw.Flush()
}

// measureList times GET /v1/vms over HTTP with 1,000 VM records in the store:
// 500 requests one after another, after 20 of warm-up.
func measureList() (listResult, error) {
	r := listResult{vms: 1000}
	dir, err := os.MkdirTemp("", "fcm-bench-api-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	st, err := store.Open(filepath.Join(dir, "fcm.db"), time.Second)
	if err != nil {
		return r, err
	}
	defer st.Close()
	secret := store.NewSecret()
	err = st.Update(func(tx *store.Tx) error {
		if err := tx.PutToken(secret, &store.Token{ID: "admin", Admin: true}); err != nil {
			return err
		}
		for i := 0; i < r.vms; i++ {
			v := &store.VM{ID: fmt.Sprintf("v%07d", i), Name: fmt.Sprintf("vm-%04d", i), Owner: "admin",
				State: "running", IP: fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), CPUs: 1, MemoryMiB: 1024,
				DiskBytes: 2 << 30, Port: 3000, Hypervisor: "qemu", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0Xyz fcm"}
			if err := tx.InsertVM(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	srv := httptest.NewServer((&daemon.Server{Store: st, Log: quiet}).Handler())
	defer srv.Close()
	var lat []time.Duration
	for i := 0; i < 520; i++ {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/vms", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		t := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return r, err
		}
		r.bytes, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return r, fmt.Errorf("GET /v1/vms: %s", resp.Status)
		}
		if i >= 20 { // warm-up
			lat = append(lat, time.Since(t))
		}
	}
	r.p50, r.p99, r.n = percentile(lat, 0.5), percentile(lat, 0.99), len(lat)
	return r, nil
}

// benchManager makes a Manager on a bridge of the bench's own, in its namespace.
func benchManager(dataDir string, driver vmm.Driver, ready func(context.Context, *store.VM) error) (*vm.Manager, *store.Store, error) {
	return benchManagerImage(dataDir, driver, ready, envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image"))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// benchManagerImage is benchManager with VMs booting the image in imageDir;
// each tweak may change the manager's config before it is made.
func benchManagerImage(dataDir string, driver vmm.Driver, ready func(context.Context, *store.VM) error, imageDir string, tweaks ...func(*vm.Config)) (*vm.Manager, *store.Store, error) {
	// As the daemon does: each VM's unprivileged hypervisor user must reach its
	// own directory, and its cgroup goes under a parent of this data dir's.
	for _, d := range []string{dataDir, filepath.Join(dataDir, "vms")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, nil, err
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, nil, err
		}
	}
	cgroup.SetParent(cgroup.ParentFor(dataDir, image.DefaultOutDir))
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), time.Second)
	if err != nil {
		return nil, nil, err
	}
	m, err := newBenchManager(dataDir, driver, ready, imageDir, st, tweaks)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return m, st, nil
}

// newBenchManager is the Manager of benchManagerImage over st.
func newBenchManager(dataDir string, driver vmm.Driver, ready func(context.Context, *store.VM) error, imageDir string, st *store.Store, tweaks []func(*vm.Config)) (*vm.Manager, error) {
	subnet := netip.MustParsePrefix("172.21.0.0/24")
	hostNet, err := network.Setup(context.Background(), network.Config{Bridge: "fcmb0", Subnet: subnet})
	if err != nil {
		return nil, err
	}
	key, err := guest.LoadOrCreateKey(filepath.Join(dataDir, "id_ed25519"))
	if err != nil {
		return nil, err
	}
	bases, err := base.Open(dataDir, base.Source{Kernel: filepath.Join(imageDir, image.KernelFile),
		Initrd: filepath.Join(imageDir, image.InitrdFile), Rootfs: filepath.Join(imageDir, image.RootfsFile)})
	if err != nil {
		return nil, err
	}
	cfg := vm.Config{
		DataDir: dataDir, Driver: driver, Network: hostNet, Subnet: subnet, Store: st, Key: key, Log: quiet, Ready: ready,
		Bases: bases,
	}
	for _, t := range tweaks {
		t(&cfg)
	}
	return vm.New(cfg)
}

// qemuManager is a Manager with the real QEMU driver on dataDir; accel says
// how QEMU runs guests here.
func qemuManager(dataDir string) (*vm.Manager, *store.Store, string, error) {
	d, err := qemu.New(qemu.Options{Logger: quiet})
	if err != nil {
		return nil, nil, "", err
	}
	m, st, err := benchManager(dataDir, d, nil)
	return m, st, string(d.Accel()), err
}

// benchAPI serves the daemon's API for m (with edge rec, if any) under an
// admin token, for the client it returns; stop ends it.
func benchAPI(m *vm.Manager, st *store.Store, rec *edge.Reconciler) (c *client.Client, stop func(), err error) {
	secret := store.NewSecret()
	if err := st.Update(func(tx *store.Tx) error {
		return tx.PutToken(secret, &store.Token{ID: "bench", Admin: true})
	}); err != nil {
		return nil, nil, err
	}
	srv := httptest.NewServer((&daemon.Server{Store: st, VMs: m, Guests: m, Log: quiet, Edge: rec}).Handler())
	return &client.Client{Host: srv.URL, Token: secret}, srv.Close, nil
}

// runCreateBench times each step of create with the real QEMU driver, and 20
// parallel creates with a driver that boots nothing (the daemon's own overhead).
func runCreateBench(w io.Writer, runs int) error {
	ctx := context.Background()
	dataDir, err := os.MkdirTemp("", "fcm-bench-create-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	m, _, accel, err := qemuManager(dataDir)
	if err != nil {
		return err
	}
	steps := map[string][]time.Duration{}
	var order []string
	for i := 0; i < runs; i++ {
		last := time.Now()
		v, err := m.Create(ctx, "bench", api.CreateVMRequest{MemoryMiB: 512}, func(_ *store.VM, step, _ string) {
			if _, ok := steps[step]; !ok {
				order = append(order, step)
			}
			steps[step] = append(steps[step], time.Since(last))
			last = time.Now()
		})
		if err != nil {
			return err
		}
		if err := m.Destroy(ctx, v.Name, ""); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "CREATE STEP (qemu, %s)\tMEDIAN\tMAX\n", accel)
	var overhead time.Duration
	for _, s := range order {
		med := percentile(steps[s], 0.5)
		if s != "ssh" {
			overhead += med
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s, med.Round(time.Millisecond), percentile(steps[s], 1).Round(time.Millisecond))
	}
	fmt.Fprintf(tw, "overhead without the guest's boot (all but ssh)\t%s\t\n", overhead.Round(time.Millisecond))
	if err := tw.Flush(); err != nil {
		return err
	}

	// 20 at once through a driver that boots nothing.
	dataDir2, err := os.MkdirTemp("", "fcm-bench-parallel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir2)
	m2, _, err := benchManager(dataDir2, noBoot{}, func(context.Context, *store.VM) error { return nil })
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	names, ips := map[string]bool{}, map[string]bool{}
	var errs []error
	start := time.Now()
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := m2.Create(ctx, "bench", api.CreateVMRequest{}, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			names[v.Name], ips[v.IP] = true, true
		}()
	}
	wg.Wait()
	total := time.Since(start)
	if len(errs) > 0 {
		return errs[0]
	}
	for n := range names {
		m2.Destroy(ctx, n, "")
	}
	fmt.Fprintf(w, "\n20 parallel creates, no-boot driver: %s total, %d distinct names, %d distinct addresses\n",
		total.Round(time.Millisecond), len(names), len(ips))
	return nil
}
