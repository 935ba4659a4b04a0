// Package metrics provides the daemon's Prometheus metrics (fcm daemon
// --metrics-listen): VMs by state, how long creates, boots, suspends, wakes
// and deploys take, API requests by route pattern and status, deploys by
// result, the edge's reconcile errors, and each running VM's CPU seconds,
// memory and network bytes, read from its cgroup and its tap when scraped.
// Labels are bounded: route patterns, never paths; a VM's name only on the
// series of that VM.
package metrics

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fcmhost/fcm/internal/cgroup"
)

// VM is what the per-VM series need of one VM.
type VM struct {
	Name, ID, State, Tap string
	MemoryMiB            int
}

// Metrics holds the daemon's collectors, registered in Registry.
type Metrics struct {
	Registry *prometheus.Registry

	apiRequests *prometheus.CounterVec
	durations   *prometheus.HistogramVec
	deploys     *prometheus.CounterVec
	edgeErrors  prometheus.Counter
}

// Operations whose durations are observed (the op label).
const (
	OpCreate  = "create"
	OpBoot    = "boot"
	OpSuspend = "suspend"
	OpWake    = "wake"
	OpDeploy  = "deploy"
)

// New makes the daemon's metrics; vms lists the VMs at each scrape.
func New(vms func() ([]VM, error)) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fcm_api_requests_total", Help: "API requests by route pattern (method and path pattern, never a path) and status code.",
	}, []string{"route", "code"})
	m.durations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fcm_operation_duration_seconds", Help: "How long VM creates, boots, suspends, wakes and deploys took, successful or not.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"op"})
	m.deploys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fcm_deploys_total", Help: "Deploys (git push) by result: succeeded or failed.",
	}, []string{"result"})
	m.edgeErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fcm_edge_reconcile_errors_total", Help: "Times the edge (Caddy) could not be given the routes it should have.",
	})
	m.Registry.MustRegister(m.apiRequests, m.durations, m.deploys, m.edgeErrors, &vmCollector{list: vms},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in Prometheus's exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// Request counts an API request of route pattern answered with code. A nil
// Metrics counts nothing (metrics off).
func (m *Metrics) Request(route string, code int) {
	if m != nil {
		m.apiRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	}
}

// Observe records that op took seconds.
func (m *Metrics) Observe(op string, seconds float64) {
	if m != nil {
		m.durations.WithLabelValues(op).Observe(seconds)
	}
}

// Deploy counts a deploy that succeeded or not.
func (m *Metrics) Deploy(ok bool) {
	if m == nil {
		return
	}
	result := "succeeded"
	if !ok {
		result = "failed"
	}
	m.deploys.WithLabelValues(result).Inc()
}

// EdgeError counts a failed edge reconcile.
func (m *Metrics) EdgeError() {
	if m != nil {
		m.edgeErrors.Inc()
	}
}

// vmCollector reads the VMs' states from the store, and the usage of the
// running ones from their cgroups and taps, at each scrape.
type vmCollector struct {
	list func() ([]VM, error)
}

var (
	descVMs = prometheus.NewDesc("fcm_vms", "VMs by state.", []string{"state"}, nil)
	descCPU = prometheus.NewDesc("fcm_vm_cpu_seconds_total",
		"CPU time a running VM's hypervisor (guest and emulation) used since it started, from its cgroup.", []string{"vm"}, nil)
	descMem = prometheus.NewDesc("fcm_vm_memory_bytes",
		"Host memory a running VM's hypervisor holds now (guest RAM it touched included), from its cgroup.", []string{"vm"}, nil)
	descMemSize = prometheus.NewDesc("fcm_vm_memory_size_bytes", "The memory a VM was given.", []string{"vm"}, nil)
	descRx      = prometheus.NewDesc("fcm_vm_network_receive_bytes_total",
		"Bytes a running VM received on its network interface since its tap was made.", []string{"vm"}, nil)
	descTx = prometheus.NewDesc("fcm_vm_network_transmit_bytes_total",
		"Bytes a running VM sent from its network interface since its tap was made.", []string{"vm"}, nil)
)

// states are the states fcm_vms always reports, 0 or not.
var states = []string{"creating", "starting", "running", "stopping", "stopped", "suspending", "suspended", "waking", "restarting", "crashed", "paused", "error"}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descCPU, descMem, descMemSize, descRx, descTx} {
		ch <- d
	}
}

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	vms, err := c.list()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descVMs, err)
		return
	}
	count := map[string]int{}
	for _, s := range states {
		count[s] = 0
	}
	for _, v := range vms {
		count[v.State]++
		ch <- prometheus.MustNewConstMetric(descMemSize, prometheus.GaugeValue, float64(int64(v.MemoryMiB)<<20), v.Name)
		if v.State != "running" {
			continue
		}
		if u, err := cgroup.ReadUsage(v.ID); err == nil {
			ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, u.CPUSeconds, v.Name)
			ch <- prometheus.MustNewConstMetric(descMem, prometheus.GaugeValue, float64(u.MemoryBytes), v.Name)
		}
		// The host's side of the tap: what it receives, the VM sent.
		if rx, err := tapBytes(v.Tap, "rx_bytes"); err == nil {
			ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, rx, v.Name)
		}
		if tx, err := tapBytes(v.Tap, "tx_bytes"); err == nil {
			ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, tx, v.Name)
		}
	}
	for state, n := range count {
		ch <- prometheus.MustNewConstMetric(descVMs, prometheus.GaugeValue, float64(n), state)
	}
}

// tapBytes reads one of a tap's byte counters.
func tapBytes(tap, counter string) (float64, error) {
	if tap == "" || strings.ContainsAny(tap, "/.") {
		return 0, os.ErrNotExist
	}
	data, err := os.ReadFile(filepath.Join("/sys/class/net", tap, "statistics", counter))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(string(data)), 64)
	return n, err
}
