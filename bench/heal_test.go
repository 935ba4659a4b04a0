package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBootsInLog reads the restarts of a daemon log as slog writes it: two
// overlap, a third starts as the first ends, a failed one ends too, and one
// never ends (it counts until the end).
func TestBootsInLog(t *testing.T) {
	log := `time=2026-12-05T15:06:35.043Z level=WARN msg="vm's hypervisor is gone" name=a host_restarted=true
time=2026-12-05T15:06:35.659Z level=INFO msg="restarting vm" name=a reason="after host restart" still_waiting=3
time=2026-12-05T15:06:35.660Z level=INFO msg="restarting vm" name=b reason="after host restart" still_waiting=2
time=2026-12-05T15:06:36.000Z level=INFO msg=request method=GET path=/v1/vms status=200
time=2026-12-05T15:06:45.467Z level=INFO msg="vm restarted" name=a took=9.807s reason="after host restart"
time=2026-12-05T15:06:45.467Z level=INFO msg="restarting vm" name=c reason="after host restart" still_waiting=1
time=2026-12-05T15:06:46.000Z level=WARN msg="vm restart failed" name=b err="boom"
time=2026-12-05T15:06:47.000Z level=INFO msg="restarting vm" name=d reason="after host restart" still_waiting=0
time=2026-12-05T15:06:50.000Z level=INFO msg="vm restarted" name=c took=4.5s reason="after host restart"
`
	path := filepath.Join(t.TempDir(), "daemon.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	end, _ := time.Parse(time.RFC3339, "2026-12-05T15:07:00Z")
	peak, n := bootsInLog(path, end)
	if peak != 2 || n != 4 {
		t.Errorf("bootsInLog = peak %d of %d restarts, want 2 of 4", peak, n)
	}
	for key, want := range map[string]string{"time": "2026-12-05T15:06:35.043Z", "msg": "vm's hypervisor is gone", "name": "a", "host_restarted": "true", "nope": ""} {
		if got := logField(`time=2026-12-05T15:06:35.043Z level=WARN msg="vm's hypervisor is gone" name=a host_restarted=true`, key); got != want {
			t.Errorf("logField(%s) = %q, want %q", key, got, want)
		}
	}
}
