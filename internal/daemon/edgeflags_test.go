package daemon

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// The default domain is made of the address this host's default route uses,
// the one `ip route get` names.
func TestDefaultDomain(t *testing.T) {
	vms := netip.MustParsePrefix("172.16.0.0/24")
	out, err := exec.Command("ip", "-4", "route", "get", "192.0.2.1").Output()
	if err != nil {
		t.Fatalf("this test needs a default route: %v", err)
	}
	f := strings.Fields(string(out))
	want := ""
	for i := range f[:len(f)-1] {
		if f[i] == "src" {
			want = strings.ReplaceAll(f[i+1], ".", "-") + ".sslip.io"
		}
	}
	c, err := EdgeOptions{CaddyAdmin: "http://127.0.0.1:2019"}.config("127.0.0.1:7777", vms)
	if err != nil {
		t.Fatal(err)
	}
	if c.Domain != want {
		t.Errorf("default domain %q, want %q (from %q)", c.Domain, want, out)
	}

	c, err = EdgeOptions{CaddyAdmin: "off"}.config("127.0.0.1:7777", vms)
	if c != nil || err != nil {
		t.Errorf("--caddy-admin off: %v %v, want no edge", c, err)
	}
	if _, err := (EdgeOptions{CaddyAdmin: "http://127.0.0.1:2019", Domain: "x.test", TLS: "magic"}).config("127.0.0.1:7777", vms); err == nil ||
		!strings.Contains(err.Error(), `--tls "magic"`) {
		t.Errorf("--tls magic: %v", err)
	}
	c, err = EdgeOptions{CaddyAdmin: "http://127.0.0.1:2019", Domain: "Apps.test.", TLS: "internal"}.config("127.0.0.1:7777", vms)
	if err != nil || c.Domain != "apps.test" || !c.TLS.Internal {
		t.Errorf("--domain Apps.test. --tls internal: %+v %v, want apps.test with Caddy's CA", c, err)
	}
}
