package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
)

// auditEvents reads `fcm events --json` (more arguments after it) as the
// admin.
func (d *daemonProc) auditEvents(t *testing.T, args ...string) []api.AuditEvent {
	t.Helper()
	out, code := d.cli(t.TempDir(), append([]string{"events", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("fcm events --json %v: exit %d\n%s", args, code, out)
	}
	return parseEvents(t, out)
}

func parseEvents(t *testing.T, out string) []api.AuditEvent {
	t.Helper()
	var evs []api.AuditEvent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e api.AuditEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("fcm events --json: %v: %q", err, line)
		}
		evs = append(evs, e)
	}
	return evs
}

// eventKey is what a person checks of an event: "action by who on vm
// (detail): result", the parts it has.
func eventKey(e api.AuditEvent) string {
	s := e.Action + " by " + e.Who
	if e.VM != "" {
		s += " on " + e.VM
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s + ": " + e.Result
}

// wantEventsOnce checks that each of want (an eventKey) is among evs
// exactly once: every change recorded, none twice.
func wantEventsOnce(t *testing.T, evs []api.AuditEvent, want ...string) {
	t.Helper()
	count := map[string]int{}
	var all []string
	for _, e := range evs {
		count[eventKey(e)]++
		all = append(all, eventKey(e))
	}
	for _, w := range want {
		if count[w] != 1 {
			t.Errorf("the audit trail has %q %d times, want once; it has:\n%s", w, count[w], strings.Join(all, "\n"))
		}
	}
}

func dumpEvents(t *testing.T, d *daemonProc) {
	for _, e := range d.auditEvents(t) {
		t.Logf("event: %s", eventKey(e))
	}
}

// wantEventsLikeOnce is wantEventsOnce with regular expressions (anchored)
// for events whose details vary (commits).
func wantEventsLikeOnce(t *testing.T, evs []api.AuditEvent, patterns ...string) {
	t.Helper()
	var all []string
	for _, e := range evs {
		all = append(all, eventKey(e))
	}
	for _, p := range patterns {
		re := regexp.MustCompile("^" + p + "$")
		n := 0
		for _, k := range all {
			if re.MatchString(k) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("the audit trail has %d events like %q, want one; it has:\n%s", n, p, strings.Join(all, "\n"))
		}
	}
}
