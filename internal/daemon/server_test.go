package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// fakeVMs is a Lifecycle of function fields; nil fields fail the test.
type fakeVMs struct {
	create  func(ctx context.Context, owner string, req api.CreateVMRequest, p vm.Progress) (*store.VM, error)
	start   func(ctx context.Context, name string, p vm.Progress) (*store.VM, error)
	stop    func(ctx context.Context, name string) (*store.VM, error)
	destroy func(ctx context.Context, name string) error

	destroyed []string // name/id of each Destroy
}

var _ Lifecycle = (*fakeVMs)(nil)

func (f *fakeVMs) CreateFor(ctx context.Context, owner vm.Owner, req api.CreateVMRequest, p vm.Progress) (*store.VM, error) {
	return f.create(ctx, owner.ID, req, p)
}
func (f *fakeVMs) Start(ctx context.Context, name, _ string, p vm.Progress) (*store.VM, error) {
	return f.start(ctx, name, p)
}
func (f *fakeVMs) Stop(ctx context.Context, name, _ string) (*store.VM, error) {
	return f.stop(ctx, name)
}
func (f *fakeVMs) Destroy(ctx context.Context, name, id string) error {
	f.destroyed = append(f.destroyed, name+"/"+id)
	return f.destroy(ctx, name)
}

type fixture struct {
	srv    *httptest.Server
	store  *store.Store
	admin  string
	user   string
	fake   *fakeVMs
	client *client.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{store: st, admin: store.NewSecret(), user: store.NewSecret(), fake: &fakeVMs{}}
	st.Update(func(tx *store.Tx) error {
		tx.PutToken(f.admin, &store.Token{ID: "admin", Admin: true})
		tx.PutToken(f.user, &store.Token{ID: "alice"})
		tx.InsertVM(&store.VM{ID: "aaaa1111", Name: "alice-vm", Owner: "alice", State: "running", IP: "172.16.0.50", Port: 3000})
		return tx.InsertVM(&store.VM{ID: "bbbb2222", Name: "admin-vm", Owner: "admin", State: "stopped", IP: "172.16.0.51", Port: 3000})
	})
	s := &Server{Store: st, VMs: f.fake, Version: "test", Hypervisor: "qemu"}
	f.srv = httptest.NewServer(s.Handler())
	t.Cleanup(f.srv.Close)
	f.client = &client.Client{Host: f.srv.URL, Token: f.admin}
	return f
}

func TestServer_EveryRouteNeedsAToken(t *testing.T) {
	f := newFixture(t)
	routes := []struct{ method, path string }{
		{"POST", "/v1/vms"}, {"GET", "/v1/vms"}, {"GET", "/v1/vms/alice-vm"},
		{"POST", "/v1/vms/alice-vm/start"}, {"POST", "/v1/vms/alice-vm/stop"}, {"DELETE", "/v1/vms/alice-vm"},
		{"GET", "/v1/sessions"}, {"GET", "/v1/vms/alice-vm/sessions"}, {"POST", "/v1/vms/alice-vm/sessions"},
		{"DELETE", "/v1/vms/alice-vm/sessions/brook"}, {"POST", "/v1/tokens/admin/rotate"},
	}
	for _, r := range routes {
		for _, auth := range []string{"", "Bearer ", "Bearer fcm_0000000000000000000000000000000000000000", "Basic " + f.admin, f.admin} {
			t.Run(fmt.Sprintf("%s %s %q", r.method, r.path, auth), func(t *testing.T) {
				req, _ := http.NewRequest(r.method, f.srv.URL+r.path, strings.NewReader("{}"))
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var e api.Error
				if resp.StatusCode != 401 || json.NewDecoder(resp.Body).Decode(&e) != nil || e.Code != api.CodeUnauthorized || e.Message == "" {
					t.Errorf("status %d, body %+v; want 401 JSON unauthorized", resp.StatusCode, e)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("content type %q", ct)
				}
			})
		}
	}
	resp, err := http.Get(f.srv.URL + "/health")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("/health without a token: %v %v", resp.StatusCode, err)
	}
}

func TestServer_OwnersSeeTheirOwnVMs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := &client.Client{Host: f.srv.URL, Token: f.user}
	vms, err := alice.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Name != "alice-vm" {
		t.Fatalf("alice sees %+v, %v", vms, err)
	}
	if _, err := alice.GetVM(ctx, "admin-vm"); !client.IsNotFound(err) {
		t.Errorf("alice GET admin-vm: %v, want not found", err)
	}
	if err := alice.DestroyVM(ctx, "admin-vm"); !client.IsNotFound(err) {
		t.Errorf("alice DELETE admin-vm: %v, want not found", err)
	}
	all, _ := f.client.ListVMs(ctx)
	if len(all) != 2 {
		t.Errorf("admin sees %d vms, want 2", len(all))
	}
}

func TestServer_ErrorsMapToStatus(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("vm %q: %w", "x", store.ErrExists), 409, api.CodeConflict},
		{fmt.Errorf("lease: %w", store.ErrExhausted), 409, api.CodeExhausted},
		{fmt.Errorf("%w: creating", vm.ErrBusy), 409, api.CodeConflict},
		{fmt.Errorf("%w: running", vm.ErrBadState), 409, api.CodeConflict},
		{vm.ErrInvalid, 400, api.CodeBadRequest},
		{fmt.Errorf("space: %w", vm.ErrInsufficientStorage), 507, api.CodeInsufficientStorage},
		{fmt.Errorf("memory: %w", vm.ErrInsufficientCapacity), 409, api.CodeInsufficientCapacity},
		{fmt.Errorf("x: %w", store.ErrNotFound), 404, api.CodeNotFound},
		{fmt.Errorf("vms: %w", vm.ErrQuota), 403, api.CodeQuota},
		{fmt.Errorf("user: %w", vm.ErrOwnerGone), 403, api.CodeForbidden},
		{errors.New("disk full"), 500, api.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			f := newFixture(t)
			f.fake.create = func(context.Context, string, api.CreateVMRequest, vm.Progress) (*store.VM, error) { return nil, tt.err }
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms", strings.NewReader(`{"name":"x"}`))
			req.Header.Set("Authorization", "Bearer "+f.admin)
			req.Header.Set("Accept", "application/x-ndjson")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.Error
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != tt.status || e.Code != tt.code || e.Message != tt.err.Error() {
				t.Errorf("got %d %+v, want %d %s", resp.StatusCode, e, tt.status, tt.code)
			}
		})
	}
}

func TestServer_BadBodies(t *testing.T) {
	f := newFixture(t)
	for _, body := range []string{`{"nmae":"x"}`, `{"cpus":"two"}`, `not json`, `{"name":"x"} trailing`} {
		req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+f.admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("body %q: status %d, want 400", body, resp.StatusCode)
		}
	}
	resp, _ := http.Get(f.srv.URL + "/v2/nothing")
	if resp.StatusCode != 404 {
		t.Errorf("unknown route: %d", resp.StatusCode)
	}
}

func TestServer_CreateStreamsProgress(t *testing.T) {
	f := newFixture(t)
	f.fake.create = func(ctx context.Context, owner string, req api.CreateVMRequest, p vm.Progress) (*store.VM, error) {
		if owner != "admin" || req.Name != "web" || req.CPUs != 2 {
			return nil, fmt.Errorf("unexpected call: %s %+v", owner, req)
		}
		for _, s := range []string{"disk", "network", "boot", "ssh"} {
			p(&store.VM{Name: "web"}, s, s+" done")
		}
		return &store.VM{ID: "cccc3333", Name: "web", State: "running", IP: "172.16.0.52", Port: 3000}, nil
	}
	var steps []string
	v, err := f.client.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", CPUs: 2}, func(ev api.Event) {
		steps = append(steps, ev.Step)
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(steps, ",") != "disk,network,boot,ssh" || v.Name != "web" || v.URL != "http://172.16.0.52:3000" {
		t.Errorf("steps %v, vm %+v", steps, v)
	}
	// An error after progress started arrives as the stream's last event.
	f.fake.create = func(ctx context.Context, owner string, req api.CreateVMRequest, p vm.Progress) (*store.VM, error) {
		p(&store.VM{Name: "x"}, "disk", "ok")
		return nil, errors.New("boot: the hypervisor exited during boot")
	}
	_, err = f.client.CreateVM(context.Background(), api.CreateVMRequest{}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Message != "boot: the hypervisor exited during boot" {
		t.Errorf("err = %v", err)
	}
	// Without Accept: ndjson the answer is one JSON VM, 201.
	f.fake.create = func(context.Context, string, api.CreateVMRequest, vm.Progress) (*store.VM, error) {
		return &store.VM{Name: "plain", State: "running"}, nil
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+f.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if resp.StatusCode != 201 || !strings.Contains(line, `"name":"plain"`) {
		t.Errorf("plain create: %d %s", resp.StatusCode, line)
	}
}
