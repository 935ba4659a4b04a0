package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/names"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// fuzzRoutes are the API's POST/PATCH routes that take a JSON body. The VM
// "nope" does not exist: its routes answer 404 before reading the body (the
// rule's lookup comes first), so no guest or deploy service is needed.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/vms"},
	{"POST", "/v1/vms/nope/sessions"},
	{"POST", "/v1/keys"},
	{"POST", "/v1/vms/nope/rollback"},
	{"PATCH", "/v1/vms/nope/config"},
	{"POST", "/v1/vms/nope/run"},
	{"POST", "/v1/tokens/admin/rotate"},
	{"POST", "/v1/users/allow"},
	{"POST", "/v1/users/deny"},
	{"POST", "/v1/logins/x/token"},
}

var apiCodes = map[string]bool{api.CodeBadRequest: true, api.CodeUnauthorized: true, api.CodeForbidden: true,
	api.CodeNotFound: true, api.CodeConflict: true, api.CodeExhausted: true, api.CodeUnavailable: true, api.CodeExpired: true}

// FuzzAPIBodies sends arbitrary bodies to every route that decodes one:
// nothing panics, nothing answers 5xx, every refusal is a 4xx JSON error with
// a known code, an unparseable body is a 400, and a VM created has a valid
// name (create checks names as the manager does).
func FuzzAPIBodies(f *testing.F) {
	for i := range fuzzRoutes {
		for _, seed := range []string{"", "{}", `{"name":"web1"}`, `{"name":"FCM"}`, `{"cpus":-1}`, `{"id":"brook"}`,
			`{"public_key":"ssh-ed25519 AAAA"}`, `{"version":-3}`, `{"set":{"A":"b"},"unset":["C"]}`, `{"command":["ls"]}`,
			`{"name":"x"} {"name":"y"}`, `{"nome":1}`, `[`, "\x00", `{"name":"` + strings.Repeat("a", 70) + `"}`} {
			f.Add(uint8(i), []byte(seed))
		}
	}
	st, err := store.Open(filepath.Join(f.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	admin := store.NewSecret()
	st.Update(func(tx *store.Tx) (err error) { _, err = tx.SetAdminToken(admin); return })
	fake := &fakeVMs{create: func(ctx context.Context, owner string, req api.CreateVMRequest, p vm.Progress) (*store.VM, error) {
		if req.Name == "" {
			req.Name = "cosmic-nova"
		}
		if err := names.Validate(req.Name); err != nil {
			return nil, fmt.Errorf("%w: %v", vm.ErrInvalid, err)
		}
		return &store.VM{ID: "abcd1234", Name: req.Name, Owner: owner, State: "running", IP: "172.16.0.50", Port: 3000}, nil
	}}
	logins, err := auth.New(auth.Config{Issuer: "https://op.invalid", ClientID: "fcm", ClientSecret: "s", PublicURL: "https://fcm.example.com"}, st, nil)
	if err != nil {
		f.Fatal(err)
	}
	h := (&Server{Store: st, VMs: fake, Auth: logins, Log: slogTo(&bytes.Buffer{})}).Handler()

	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		req := httptest.NewRequest(rt.method, rt.path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		res := w.Result()
		if res.StatusCode >= 500 {
			t.Fatalf("%s %s %q: %d %s", rt.method, rt.path, body, res.StatusCode, w.Body)
		}
		if res.StatusCode >= 400 {
			var e api.Error
			if res.Header.Get("Content-Type") != "application/json" || json.Unmarshal(w.Body.Bytes(), &e) != nil ||
				e.Message == "" || !apiCodes[e.Code] {
				t.Fatalf("%s %s %q: %d with %q, want a JSON error with a code", rt.method, rt.path, body, res.StatusCode, w.Body)
			}
		}
		if strings.Contains(rt.path, "/nope/") && res.StatusCode != 404 {
			t.Fatalf("%s %s: answered %d for a missing VM, want 404", rt.method, rt.path, res.StatusCode)
		}
		if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 && !json.Valid(trimmed) && res.StatusCode != 400 &&
			rt.path != "/v1/tokens/admin/rotate" && !strings.Contains(rt.path, "/nope/") {
			t.Fatalf("%s %s: a body that is not JSON (%q) answered %d", rt.method, rt.path, body, res.StatusCode)
		}
		if rt.path == "/v1/vms" && res.StatusCode < 300 {
			var v api.VM
			if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || names.Validate(v.Name) != nil {
				t.Fatalf("created %q from %q (%v)", v.Name, body, err)
			}
		}
	})
}
