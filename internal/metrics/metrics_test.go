package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetrics: the VM states are counted (every state reported, 0 or not),
// requests by route pattern and code, operation durations and deploys by
// result; a VM's size is on its own series; the exposition is Prometheus's
// text format, which the library's linter accepts.
func TestMetrics(t *testing.T) {
	vms := []VM{{Name: "a", ID: "nocgroup1", State: "running", Tap: "tap_nocgroup1", MemoryMiB: 512},
		{Name: "b", ID: "nocgroup2", State: "stopped", MemoryMiB: 1024}, {Name: "c", ID: "nocgroup3", State: "running", MemoryMiB: 256}}
	m := New(func() ([]VM, error) { return vms, nil })
	m.Request("GET /v1/vms/{name}", 200)
	m.Request("GET /v1/vms/{name}", 200)
	m.Request("GET /v1/vms/{name}", 404)
	m.Observe(OpCreate, 4.2)
	m.Deploy(true)
	m.Deploy(false)
	m.EdgeError()
	var nilM *Metrics // metrics off: every call is a no-op
	nilM.Request("x", 1)
	nilM.Observe("x", 1)
	nilM.Deploy(true)
	nilM.EdgeError()

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	text := string(body)
	for _, want := range []string{
		`fcm_vms{state="running"} 2`, `fcm_vms{state="stopped"} 1`, `fcm_vms{state="suspended"} 0`,
		`fcm_api_requests_total{code="200",route="GET /v1/vms/{name}"} 2`, `fcm_api_requests_total{code="404",route="GET /v1/vms/{name}"} 1`,
		`fcm_operation_duration_seconds_count{op="create"} 1`, `fcm_operation_duration_seconds_sum{op="create"} 4.2`,
		`fcm_deploys_total{result="succeeded"} 1`, `fcm_deploys_total{result="failed"} 1`, `fcm_edge_reconcile_errors_total 1`,
		`fcm_vm_memory_size_bytes{vm="b"} 1.073741824e+09`, "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the exposition lacks %s", want)
		}
	}
	if problems, err := testutil.GatherAndLint(m.Registry); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}

	bad := New(func() ([]VM, error) { return nil, errors.New("store closed") })
	rec = httptest.NewRecorder()
	bad.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), "store closed") {
		t.Errorf("a scrape whose VM list fails: %d %q", rec.Code, rec.Body.String())
	}
}
