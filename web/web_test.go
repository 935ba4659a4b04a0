package web

import (
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// TestStateSince: the state cell says why and since when a VM sleeps.
func TestStateSince(t *testing.T) {
	at := time.Date(2026, 12, 5, 18, 40, 0, 0, time.UTC)
	for _, tt := range []struct {
		vm   api.VM
		want string
	}{
		{api.VM{State: "suspended", SuspendedAt: &at}, ">since 2026-12-05 18:40 UTC</small>"},
		{api.VM{State: "suspended", Reason: "idle for 5m", SuspendedAt: &at}, ">idle for 5m, since 2026-12-05 18:40 UTC</small>"},
		{api.VM{State: "running"}, `data-field="reason"></small>`},
	} {
		var b strings.Builder
		if err := Pages.ExecuteTemplate(&b, "state", tt.vm); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), tt.want) {
			t.Errorf("%+v: %s, want %q in it", tt.vm, b.String(), tt.want)
		}
	}
}
