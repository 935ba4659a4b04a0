package daemon

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/store"
)

// TestAuditTrail: a change is recorded once, with the person, their address,
// the VM and how it went; a refused one with its status; config changes by
// name only. A person reads the events of their VMs and their own; another
// reads none of them (a try on a VM they may not see is not even recorded,
// as it never reached the VM); the admin reads all.
func TestAuditTrail(t *testing.T) {
	p := newPeople(t)
	h := routeServer(t, p)
	do := func(secret, method, path, body string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = "192.0.2.7:4242"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	if code, body := do(p.alice, "POST", "/v1/vms/alice-vm/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, body)
	}
	do(p.alice, "PATCH", "/v1/vms/alice-vm", `{"suspend_after":"nonsense"}`) // refused: 400
	do(p.bob, "POST", "/v1/vms/alice-vm/stop", "")                           // 404: not his
	do(p.bob, "POST", "/v1/keys", `{"key":"not a key"}`)                     // his own, refused
	events := func(secret, query string) []store.AuditEvent {
		code, body := do(secret, "GET", "/v1/events"+query, "")
		var out []store.AuditEvent
		if code != 200 || json.Unmarshal([]byte(body), &out) != nil {
			t.Fatalf("GET /v1/events%s: %d %s", query, code, body)
		}
		return out
	}
	alice := events(p.alice, "")
	if len(alice) != 2 || alice[0].Action != "stop" || alice[0].Who != "alice@example.com" || alice[0].From != "192.0.2.7" ||
		alice[0].VM != "alice-vm" || alice[0].Result != "ok" || alice[1].Action != "update" || alice[1].Result != "HTTP 400" {
		t.Errorf("alice's events: %+v", alice)
	}
	bob := events(p.bob, "")
	if len(bob) != 1 || bob[0].Action != "key add" || bob[0].Who != "bob@example.com" || bob[0].Result == "ok" {
		t.Errorf("bob's events: %+v", bob)
	}
	if all := events(p.admin, ""); len(all) != 3 {
		t.Errorf("the admin's events: %+v", all)
	}
	if got := events(p.admin, "?vm=alice-vm&since=1h"); len(got) != 2 {
		t.Errorf("the admin's events of alice-vm in the last hour: %+v", got)
	}
	if got := events(p.admin, "?after="+strconv.FormatUint(alice[0].Seq, 10)); len(got) != 2 {
		t.Errorf("events after the first: %+v", got)
	}
	if code, _ := do(p.admin, "GET", "/v1/events?since=yesterday", ""); code != http.StatusBadRequest {
		t.Errorf("since=yesterday: %d", code)
	}
}
