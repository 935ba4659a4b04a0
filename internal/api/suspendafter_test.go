package api

import (
	"testing"
	"time"
)

func TestSuspendAfter(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"off": 0, "0": 0, "10s": 10 * time.Second, "5m": 5 * time.Minute, "1h30m": 90 * time.Minute, " 2h ": 2 * time.Hour,
	} {
		got, err := ParseSuspendAfter(in)
		if err != nil || got != want {
			t.Errorf("ParseSuspendAfter(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "1s", "-5m", "31d", "800h"} {
		if d, err := ParseSuspendAfter(in); err == nil {
			t.Errorf("ParseSuspendAfter(%q) = %v, want an error", in, d)
		}
	}
	for d, want := range map[time.Duration]string{
		0: "off", 10 * time.Second: "10s", 5 * time.Minute: "5m", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h", 61 * time.Second: "1m1s",
	} {
		if got := FormatSuspendAfter(d); got != want {
			t.Errorf("FormatSuspendAfter(%v) = %q, want %q", d, got, want)
		}
	}
}
