package dist

import (
	"os"
	"strings"
	"testing"
)

// TestServiceUnit_BootOrder: the unit the quick start installs starts fcm at
// boot after the network and Caddy (which it pushes routes to), restarts it
// when it dies, and never stops VMs when it stops.
func TestServiceUnit_BootOrder(t *testing.T) {
	data, err := os.ReadFile("../../deploy/fcm.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], strings.Fields(v)...)
		}
	}
	has := func(k, v string) bool {
		for _, x := range keys[k] {
			if x == v {
				return true
			}
		}
		return false
	}
	for _, want := range [][2]string{
		{"After", "network-online.target"}, {"After", "caddy.service"}, {"Wants", "network-online.target"},
		{"WantedBy", "multi-user.target"}, {"Restart", "always"}, {"KillMode", "process"},
	} {
		if !has(want[0], want[1]) {
			t.Errorf("deploy/fcm.service: no %s=%s (has %s=%v)", want[0], want[1], want[0], keys[want[0]])
		}
	}
}
