package daemon

import (
	"strings"
	"testing"
)

func TestGitSSHPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		port int
		fail string
	}{
		{":2222", 2222, ""},
		{"127.0.0.1:12222", 12222, ""},
		{"off", 0, ""},
		{"", 0, ""},
		{"2222", 0, "want host:port"},
		{":0", 0, "out of range"},
		{":70000", 0, "out of range"},
	} {
		port, err := gitSSHPort(tc.in)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.fail)
			}
		} else if err != nil || port != tc.port {
			t.Errorf("%q = %d, %v; want %d", tc.in, port, err, tc.port)
		}
	}
}
