package network

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/netns"
)

// helperEnv, when set, makes the test binary act as a small helper program
// (see runHelper) instead of running tests.
const helperEnv = "FCM_NETWORK_TEST_HELPER"

// testMAC is the MAC of test VMs whose MAC does not matter.
var testMAC = net.HardwareAddr{0x02, 0xfc, 0, 0, 0, 0x99}

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	if netns.Current() == "" {
		code, err := netns.Reexec("fcm-net-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, "network tests:", err)
			os.Exit(1)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// testConfig is the configuration the daemon uses by default.
func testConfig() Config {
	return Config{
		Bridge:    "fcm0",
		Subnet:    netip.MustParsePrefix("172.16.0.0/24"),
		HostPorts: DefaultHostPorts,
	}
}

// setup runs Setup and tears everything down when the test ends.
func setup(t *testing.T, cfg Config) *Host {
	t.Helper()
	t.Cleanup(func() {
		if err := Teardown(context.Background(), cfg); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	h, err := Setup(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return h
}

// run runs a command and returns its output, failing the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipLink is the part of `ip -j -d addr show` the tests look at.
type ipLink struct {
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Address  string   `json:"address"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			Type    string `json:"type"`
			Persist bool   `json:"persist"`
		} `json:"info_data"`
	} `json:"linkinfo"`
	Addrs []struct {
		Family string `json:"family"`
		Local  string `json:"local"`
		Len    int    `json:"prefixlen"`
	} `json:"addr_info"`
}

// showLink describes a link as `ip` sees it, or returns nil if it is missing.
func showLink(t *testing.T, name string) *ipLink {
	t.Helper()
	out, err := exec.Command("ip", "-j", "-d", "addr", "show", "dev", name).Output()
	if err != nil {
		return nil // "Device does not exist"
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("parse ip output %q: %v", out, err)
	}
	if len(links) != 1 {
		t.Fatalf("ip addr show dev %s: %d links", name, len(links))
	}
	return &links[0]
}

// ipv4Addrs lists a link's IPv4 addresses as a/len.
func (l *ipLink) ipv4Addrs() []string {
	var a []string
	for _, x := range l.Addrs {
		if x.Family == "inet" {
			a = append(a, fmt.Sprintf("%s/%d", x.Local, x.Len))
		}
	}
	return a
}

func listTable(t *testing.T) string {
	t.Helper()
	return run(t, "nft", "list", "table", "inet", "fcm")
}

func TestConfig_Validate(t *testing.T) {
	ok := testConfig()
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string // "" means valid
	}{
		{"default /24", func(c *Config) {}, ""},
		{"/16", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.1.0.0/16") }, ""},
		{"/29", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.1.0.8/29") }, ""},
		{"no ports", func(c *Config) { c.HostPorts = nil }, ""},
		{"allowed egress", func(c *Config) { c.AllowEgress = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, ""},
		{"allowed egress ipv6", func(c *Config) { c.AllowEgress = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "IPv4 prefix"},
		{"allowed egress unset", func(c *Config) { c.AllowEgress = []netip.Prefix{{}} }, "IPv4 prefix"},
		{"bridge with dot dash underscore", func(c *Config) { c.Bridge = "br-fcm_0.1" }, ""},
		{"ipv6", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "IPv4"},
		{"ipv4-mapped ipv6", func(c *Config) { c.Subnet = netip.MustParsePrefix("::ffff:172.16.0.0/120") }, "IPv4"},
		{"/8", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/8") }, "/16 and /29"},
		{"/30", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/30") }, "/16 and /29"},
		{"no subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, "subnet"},
		{"empty bridge", func(c *Config) { c.Bridge = "" }, "empty"},
		{"bridge too long", func(c *Config) { c.Bridge = "abcdefghijklmnop" }, "longer than 15"},
		{"bridge with slash", func(c *Config) { c.Bridge = "fcm/0" }, "invalid character"},
		{"bridge with space", func(c *Config) { c.Bridge = "fcm 0" }, "invalid character"},
		{"bridge with colon", func(c *Config) { c.Bridge = "fcm:0" }, "invalid character"},
		{"bridge dotdot", func(c *Config) { c.Bridge = ".." }, "not allowed"},
		{"port 0", func(c *Config) { c.HostPorts = []uint16{80, 0} }, "port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v, want nil", c, err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate(%+v) = nil, want error containing %q", c, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate(%+v) = %q, want it to contain %q", c, err, tt.wantErr)
			}
		})
	}
}

func TestConfig_Gateway(t *testing.T) {
	for subnet, want := range map[string]string{
		"10.1.0.0/16":   "10.1.0.1",
		"172.16.0.0/24": "172.16.0.1",
		"172.16.0.7/24": "172.16.0.1", // host bits are ignored
		"10.9.8.16/29":  "10.9.8.17",
	} {
		c := Config{Subnet: netip.MustParsePrefix(subnet)}
		if got := c.Gateway().String(); got != want {
			t.Errorf("Config{Subnet: %s}.Gateway() = %s, want %s", subnet, got, want)
		}
	}
}

func TestSetup_Idempotent(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	h := setup(t, cfg)

	br := showLink(t, "fcm0")
	if br == nil {
		t.Fatal("bridge fcm0 missing after Setup")
	}
	if br.LinkInfo.Kind != "bridge" || !slices.Contains(br.Flags, "UP") {
		t.Errorf("fcm0: kind %q flags %v, want an up bridge", br.LinkInfo.Kind, br.Flags)
	}
	if got := br.ipv4Addrs(); !slices.Equal(got, []string{"172.16.0.1/24"}) {
		t.Errorf("fcm0 addresses %v, want exactly [172.16.0.1/24]", got)
	}
	if br.Address != "02:fc:ac:10:00:01" {
		t.Errorf("fcm0 MAC %s, want the fixed 02:fc:ac:10:00:01", br.Address)
	}
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/ip_forward":             "0", // never the global knob
		"/proc/sys/net/ipv4/conf/fcm0/forwarding":   "1",
		"/proc/sys/net/ipv6/conf/fcm0/disable_ipv6": "1",
		"/proc/sys/net/ipv6/conf/fcm0/accept_ra":    "0",
	} {
		if got := strings.TrimSpace(run(t, "cat", path)); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
	first := listTable(t)
	for _, want := range []string{
		"set vms {", "type ipv4_addr",
		"type nat hook postrouting priority srcnat", `ip saddr 172.16.0.0/24 oifname != "fcm0" masquerade`,
		"type filter hook forward priority filter", `iifname "fcm0" ip saddr != @vms drop`,
		`oifname "fcm0" ct state established,related accept`,
		`iifname "fcm0" oifname "fcm0" drop`,
		`iifname "fcm0" ip daddr @egress_allow accept`, `iifname "fcm0" ip daddr @egress_block drop`,
		"type filter hook input priority filter", `iifname "fcm0" meta nfproto ipv4 tcp dport { 80, 443 } accept`,
		`iifname "fcm0" ip daddr @host_local drop`, "0.0.0.0/8, 127.0.0.0/8,\n\t\t\t     169.254.0.0/16, 224.0.0.0/3 }",
		`iifname "fcm0" icmp type echo-request accept`,
	} {
		if !strings.Contains(first, want) {
			t.Errorf("nft table lacks %q:\n%s", want, first)
		}
	}
	l2 := run(t, "nft", "list", "table", "bridge", "fcm-l2")
	for _, want := range []string{
		"type ifname . ether_addr . ipv4_addr", "type filter hook prerouting priority filter",
		`iifname != @guests accept`, `iifname . ether saddr != @macs drop`,
		`iifname . ether saddr . ip saddr @ports accept`,
		`iifname . arp saddr ether . arp saddr ip @ports accept`,
		"\t\tdrop\n",
	} {
		if !strings.Contains(l2, want) {
			t.Errorf("nft table bridge fcm-l2 lacks %q:\n%s", want, l2)
		}
	}

	// Setup over the existing state (a restarted daemon), with somebody
	// else's address on the bridge and forwarding turned off meanwhile.
	run(t, "ip", "addr", "add", "10.5.0.1/24", "dev", "fcm0")
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/fcm0/forwarding", []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, cfg); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	if second := listTable(t); second != first {
		t.Errorf("nft table changed on second Setup:\n--- first\n%s\n--- second\n%s", first, second)
	}
	if n := strings.Count(run(t, "nft", "list", "tables"), "table inet fcm\n"); n != 1 {
		t.Errorf("%d tables inet fcm, want 1", n)
	}
	if n := strings.Count(run(t, "ip", "-o", "link", "show", "type", "bridge"), " fcm0:"); n != 1 {
		t.Errorf("%d bridges fcm0, want 1", n)
	}
	br = showLink(t, "fcm0")
	if got := br.ipv4Addrs(); !slices.Equal(got, []string{"172.16.0.1/24", "10.5.0.1/24"}) {
		t.Errorf("fcm0 addresses after second Setup %v, want [172.16.0.1/24 10.5.0.1/24]", got)
	}
	if got := strings.TrimSpace(run(t, "cat", "/proc/sys/net/ipv4/conf/fcm0/forwarding")); got != "1" {
		t.Errorf("fcm0 forwarding after second Setup = %s, want 1", got)
	}

	// VM addresses survive a re-Setup, and the table text stays the same.
	for i, ip := range []string{"172.16.0.10", "172.16.0.11", "172.16.0.12"} {
		tap := fmt.Sprintf("tap_idem%04d", i)
		t.Cleanup(func() { h.RemoveVM(ctx, tap, netip.Addr{}) })
		if err := h.AddVM(ctx, tap, netip.MustParseAddr(ip), net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	withVMs := listTable(t)
	if !strings.Contains(withVMs, "elements = {") {
		t.Fatalf("set has no elements after AddVM:\n%s", withVMs)
	}
	h2, err := Setup(ctx, cfg)
	if err != nil {
		t.Fatalf("third Setup: %v", err)
	}
	withBindings := run(t, "nft", "list", "table", "bridge", "fcm-l2")
	if !strings.Contains(withBindings, `"tap_idem0002" . 02:00:00:00:00:02 . 172.16.0.12`) {
		t.Errorf("binding of tap_idem0002 missing:\n%s", withBindings)
	}
	if again := listTable(t); again != withVMs {
		t.Errorf("nft table changed on Setup with VMs:\n--- before\n%s\n--- after\n%s", withVMs, again)
	}
	if again := run(t, "nft", "list", "table", "bridge", "fcm-l2"); again != withBindings {
		t.Errorf("bridge table changed on Setup with VMs:\n--- before\n%s\n--- after\n%s", withBindings, again)
	}
	addrs, err := h2.VMAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(addrs); got != "[172.16.0.10 172.16.0.11 172.16.0.12]" {
		t.Errorf("VMAddrs after re-Setup = %s, want the three VMs", got)
	}
}

func TestSetup_OtherSubnetAndNoPorts(t *testing.T) {
	cfg := Config{Bridge: "fcmtest1", Subnet: netip.MustParsePrefix("10.1.0.0/16")}
	setup(t, cfg)
	if got := showLink(t, "fcmtest1").ipv4Addrs(); !slices.Equal(got, []string{"10.1.0.1/16"}) {
		t.Errorf("fcmtest1 addresses %v, want [10.1.0.1/16]", got)
	}
	table := listTable(t)
	if !strings.Contains(table, `ip saddr 10.1.0.0/16 oifname != "fcmtest1" masquerade`) {
		t.Errorf("masquerade rule for 10.1.0.0/16 missing:\n%s", table)
	}
	if strings.Contains(table, "dport") {
		t.Errorf("port rule present without HostPorts:\n%s", table)
	}
	if !strings.Contains(table, `iifname "fcmtest1" drop`) {
		t.Errorf("input does not drop the rest from guests:\n%s", table)
	}
}

func TestSetup_RejectsNonBridge(t *testing.T) {
	run(t, "ip", "link", "add", "fcmveth0", "type", "veth", "peer", "name", "fcmveth1")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "fcmveth0").Run() })
	cfg := testConfig()
	cfg.Bridge = "fcmveth0"
	_, err := Setup(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "fcmveth0") || !strings.Contains(err.Error(), "not a bridge") {
		t.Fatalf("Setup over a veth = %v, want a 'not a bridge' error naming fcmveth0", err)
	}
	if err := Teardown(context.Background(), cfg); err == nil {
		t.Errorf("Teardown deleted a veth it does not own")
	}
}

func TestTeardown_RemovesTableAndBridge(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	h, err := Setup(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddVM(ctx, "tap_teardown", netip.MustParseAddr("172.16.0.20"), testMAC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", "tap_teardown").Run() })
	if err := Teardown(ctx, cfg); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	for _, tbl := range []string{"inet fcm", "bridge fcm-l2"} {
		if out, err := exec.Command("nft", append([]string{"list", "table"}, strings.Fields(tbl)...)...).CombinedOutput(); err == nil {
			t.Errorf("table %s still exists after Teardown:\n%s", tbl, out)
		}
	}
	if showLink(t, "fcm0") != nil {
		t.Errorf("bridge fcm0 still exists after Teardown")
	}
	if err := Teardown(ctx, cfg); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if _, err := h.VMAddrs(); err == nil {
		t.Errorf("VMAddrs without a table succeeded")
	}
}
