package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/store"
)

// TestDomains: a VM's own domains through the API: added (again: the same
// answer), refused when bad, under fcm's domain or another VM's (to another
// person only "taken", naming no VM), listed with what DNS says, in the
// edge's sites, audited, removed; a VM another person cannot see is 404.
func TestDomains(t *testing.T) {
	p := newPeople(t)
	if err := p.store.Update(func(tx *store.Tx) error {
		if err := tx.InsertVM(&store.VM{ID: "bbbb2222", Name: "bob-vm", Owner: p.bobID, State: "running", IP: "172.16.0.51", Port: 3000}); err != nil {
			return err
		}
		return tx.InsertVM(&store.VM{ID: "dddd4444", Name: "alice-priv", Owner: p.aliceID, State: "running", IP: "172.16.0.52", Port: 3000, NoExpose: true})
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// No Caddy answers: routes stay pending, and every pass ends at once.
	rec := edge.New(edge.Config{Admin: "http://127.0.0.1:1", Domain: "apps.test", Daemon: "127.0.0.1:7777"}, Sites(p.store), nil)
	go rec.Run(ctx)
	s := &Server{Store: p.store, VMs: &fakeVMs{}, Guests: noGuests{}, Log: slogTo(io.Discard), Edge: rec,
		Resolver: resolver("127.0.0.1:1")} // no DNS server: nothing resolves
	h := s.Handler()
	do := func(secret, method, path, body string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}

	for range 2 {
		code, body := do(p.alice, "POST", "/v1/vms/alice-vm/domains", `{"domain":"App.Example.org."}`)
		var d api.Domain
		if code != 201 || json.Unmarshal([]byte(body), &d) != nil || d.Domain != "app.example.org" || d.URL != "https://app.example.org" ||
			d.Route != RoutePending || d.DNS.Points || d.DNS.Target != "alice-vm.apps.test" ||
			d.DNS.Message != "app.example.org does not resolve yet: add a CNAME record to alice-vm.apps.test" {
			t.Fatalf("alice adds app.example.org: %d %s", code, body)
		}
	}
	for _, tc := range []struct {
		who, vm, domain string
		code            int
		want            string
	}{
		{p.bob, "bob-vm", "app.example.org", 409, `{"error":"app.example.org is taken: another VM on this host serves it","code":"taken"}`},
		{p.admin, "bob-vm", "app.example.org", 409, "app.example.org is already alice-vm's: remove it there first (fcm domains rm alice-vm app.example.org)"},
		{p.alice, "alice-vm", "bob-vm.apps.test", 400, "bob-vm.apps.test is under apps.test"},
		{p.alice, "alice-vm", "apps.test", 400, "is under apps.test"},
		{p.alice, "alice-vm", "bad_name.org", 400, `invalid domain \"bad_name.org\"`},
		{p.alice, "alice-vm", "localhost", 400, "invalid domain"},
		{p.alice, "alice-priv", "priv.example.org", 400, "alice-priv has no public URL (made with --no-expose)"},
		{p.bob, "alice-vm", "bob.example.org", 404, `no vm named \"alice-vm\"`},
	} {
		code, body := do(tc.who, "POST", "/v1/vms/"+tc.vm+"/domains", `{"domain":"`+tc.domain+`"}`)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s on %s: %d %s, want %d %q", tc.domain, tc.vm, code, body, tc.code, tc.want)
		}
	}
	if code, body := do(p.alice, "GET", "/v1/vms/alice-vm/domains", ""); code != 200 || !strings.Contains(body, `"domain":"app.example.org"`) {
		t.Errorf("alice lists: %d %s", code, body)
	}
	if code, body := do(p.bob, "GET", "/v1/vms/alice-vm/domains", ""); code != 404 {
		t.Errorf("bob lists alice's: %d %s", code, body)
	}
	if code, body := do(p.alice, "GET", "/v1/vms/alice-vm", ""); code != 200 || !strings.Contains(body, `"domains":["app.example.org"]`) {
		t.Errorf("alice's VM: %d %s", code, body)
	}
	if w := get(t, h, "/vms/alice-vm", p.alice); !strings.Contains(w.Body.String(), `<dd data-field="domains"><a href="https://app.example.org" rel="noopener">https://app.example.org</a></dd>`) {
		t.Errorf("alice-vm's page does not link its domain:\n%s", w.Body.String())
	}
	sites, _ := Sites(p.store)()
	for _, site := range sites {
		if want := site.Name == "alice-vm"; want != (len(site.Domains) == 1 && site.Domains[0] == "app.example.org") {
			t.Errorf("edge site %+v", site)
		}
	}
	if code, body := do(p.bob, "DELETE", "/v1/vms/alice-vm/domains/app.example.org", ""); code != 404 {
		t.Errorf("bob removes alice's: %d %s", code, body)
	}
	if code, body := do(p.alice, "DELETE", "/v1/vms/alice-vm/domains/app.example.org", ""); code != 204 {
		t.Errorf("alice removes: %d %s", code, body)
	}
	if code, body := do(p.alice, "DELETE", "/v1/vms/alice-vm/domains/app.example.org", ""); code != 404 || !strings.Contains(body, "alice-vm has no domain app.example.org") {
		t.Errorf("alice removes it again: %d %s", code, body)
	}
	// Freed, it is bob's to take.
	if code, body := do(p.bob, "POST", "/v1/vms/bob-vm/domains", `{"domain":"app.example.org"}`); code != 201 {
		t.Errorf("bob adds the freed name: %d %s", code, body)
	}
	code, body := do(p.alice, "GET", "/v1/events", "")
	var evs []store.AuditEvent
	if code != 200 || json.Unmarshal([]byte(body), &evs) != nil {
		t.Fatalf("events: %d %s", code, body)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Action+" "+e.Detail+" "+e.Result)
	}
	if want := "domain add app.example.org ok"; len(got) == 0 || got[0] != want || !strings.Contains(strings.Join(got, "|"), "domain rm app.example.org ok") {
		t.Errorf("alice's events: %q, want %q first and the removal", got, want)
	}
}
