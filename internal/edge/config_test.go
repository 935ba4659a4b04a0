package edge

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidateDomain(t *testing.T) {
	for _, d := range []string{"apps.example.com", "1-2-3-4.sslip.io", "e2e.test"} {
		if err := ValidateDomain(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	for _, d := range []string{"", "localhost", "bad_domain.test", "UPPER.test", "-a.test", "a..test", "a.test.", "é.test", strings.Repeat("a", 64) + ".test"} {
		if err := ValidateDomain(d); err == nil {
			t.Errorf("%q accepted", d)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Admin: "http://127.0.0.1:2019", Domain: "apps.test", Daemon: "127.0.0.1:7777"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for want, mod := range map[string]func(*Config){
		"invalid Caddy admin address": func(c *Config) { c.Admin = "127.0.0.1:2019" },
		"invalid domain":              func(c *Config) { c.Domain = "nodots" },
		"want an https:// URL":        func(c *Config) { c.TLS.CA = "http://ca.test/dir" },
		"invalid ACME email":          func(c *Config) { c.TLS.Email = "nobody" },
		"no such file":                func(c *Config) { c.TLS.CARoot = "/nonexistent/root.pem" },
		"takes no --acme-ca":          func(c *Config) { c.TLS.Internal, c.TLS.CA = true, "https://ca.test/dir" },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
	}
}

// The server fcm puts in Caddy: HTTPS only, a route per site with its @id,
// the daemon's route first, a 503 for a VM that is not running.
func TestServerConfig(t *testing.T) {
	c := Config{Admin: "http://127.0.0.1:2019", Domain: "apps.test", Daemon: "0.0.0.0:7777", WakeSecret: "s3cret"}
	srv := c.server([]Site{
		{Name: "zeta", IP: "172.16.0.51", Port: 3000, State: "running", Domains: []string{"app.example.org", "www.example.org"}},
		{Name: "alpha", IP: "172.16.0.50", Port: 8080, State: "stopped"},
		{Name: "dozy", IP: "172.16.0.52", Port: 3000, State: "suspended"},
	})
	b, _ := json.Marshal(srv)
	s := string(b)
	for _, want := range []string{
		`"listen":[":443"]`, `"tls_connection_policies":[{}]`,
		`{"@id":"fcm-daemon","handle":[{"flush_interval":-1,"handler":"reverse_proxy","stream_close_delay":"1h","upstreams":[{"dial":"127.0.0.1:7777"}]}],"match":[{"host":["fcm.apps.test"]}],"terminal":true}`,
		`"@id":"fcm-vm-zeta","handle":[{"handler":"reverse_proxy","stream_close_delay":"1h","transport":{"keep_alive":{"idle_timeout":"2s"},"protocol":"http"},"upstreams":[{"dial":"172.16.0.51:3000"}]}],"match":[{"host":["zeta.apps.test","app.example.org","www.example.org"]}]`,
		`"body":"alpha is stopped: start it with: fcm start alpha\n"`, `"status_code":503`,
		// A sleeping VM's requests go to the daemon's waker, with the secret.
		`"@id":"fcm-vm-dozy","handle":[{"flush_interval":-1,"handler":"reverse_proxy","headers":{"request":{"set":{"X-Fcm-Vm":["dozy"],"X-Fcm-Wake":["s3cret"]}}},"stream_close_delay":"1h","upstreams":[{"dial":"127.0.0.1:7777"}]}]`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("server config lacks %s:\n%s", want, s)
		}
	}
	if strings.Index(s, "fcm-vm-alpha") > strings.Index(s, "fcm-vm-zeta") {
		t.Errorf("routes not in name order: %s", s)
	}
	p, _ := json.Marshal(Config{Domain: "apps.test", TLS: TLS{CA: "https://ca.test/dir", CARoot: "/r.pem"}}.policy(nil))
	if string(p) != `{"@id":"fcm-tls","issuers":[{"ca":"https://ca.test/dir","module":"acme","trusted_roots_pem_files":["/r.pem"]}],"subjects":["*.apps.test"]}` {
		t.Errorf("policy %s", p)
	}
	p, _ = json.Marshal(Config{Domain: "apps.test", TLS: TLS{Email: "ops@apps.test"}}.policy(nil))
	if string(p) != `{"@id":"fcm-tls","issuers":[{"ca":"https://acme-v02.api.letsencrypt.org/directory","email":"ops@apps.test","module":"acme"}],"subjects":["*.apps.test"]}` {
		t.Errorf("default policy %s", p)
	}
	p, _ = json.Marshal(Config{Domain: "apps.test", TLS: TLS{Internal: true}}.policy(nil))
	if string(p) != `{"@id":"fcm-tls","issuers":[{"module":"internal"}],"subjects":["*.apps.test"]}` {
		t.Errorf("internal policy %s", p)
	}
	// A site's own domains get their certificates from the same CA.
	p, _ = json.Marshal(c.policy([]Site{{Name: "b", Domains: []string{"www.example.org"}}, {Name: "a", Domains: []string{"app.example.org"}}}))
	if !strings.Contains(string(p), `"subjects":["*.apps.test","app.example.org","www.example.org"]`) {
		t.Errorf("policy with custom domains %s", p)
	}
}

func TestValidateCustomDomain(t *testing.T) {
	c := Config{Domain: "apps.test"}
	if err := c.ValidateCustomDomain("app.example.org"); err != nil {
		t.Error(err)
	}
	for d, want := range map[string]string{
		"apps.test":          "is under apps.test",
		"fcm.apps.test":      "is under apps.test",
		"other-vm.apps.test": "pick a name of your own",
		"x.y.apps.test":      "is under apps.test",
		"example":            "invalid domain",
		"Bad_Name.org":       "invalid domain",
	} {
		if err := c.ValidateCustomDomain(d); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", d, err, want)
		}
	}
	// A name that merely ends like the domain is someone else's.
	if err := c.ValidateCustomDomain("myapps.test"); err != nil {
		t.Error(err)
	}
}
