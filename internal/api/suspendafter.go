package api

import (
	"fmt"
	"strings"
	"time"
)

// Bounds of a VM's idle time before it is suspended (--suspend-after).
const (
	MinSuspendAfter = 5 * time.Second
	MaxSuspendAfter = 30 * 24 * time.Hour
)

// ParseSuspendAfter reads a --suspend-after value: a duration such as 30s,
// 5m or 1h30m, or off (also 0), which is 0.
func ParseSuspendAfter(s string) (time.Duration, error) {
	switch strings.TrimSpace(s) {
	case "off", "0", "never":
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("suspend-after %q: want a duration such as 30s, 5m or 1h, or off", s)
	}
	if d < MinSuspendAfter || d > MaxSuspendAfter {
		return 0, fmt.Errorf("suspend-after %s out of range %s-%s (or off)", FormatSuspendAfter(d), FormatSuspendAfter(MinSuspendAfter), FormatSuspendAfter(MaxSuspendAfter))
	}
	return d, nil
}

// FormatSuspendAfter writes d the way people write it (5m, 1h30m, 10s,
// 720h), or off for 0.
func FormatSuspendAfter(d time.Duration) string {
	if d <= 0 {
		return "off"
	}
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
