package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
)

// TestForwarding_OnlyWhereGuestsNeedIt routes two namespaces, left and right,
// through the test's namespace (the host) beside the bridge and an uplink,
// and checks that Setup does not make the host forward between them, and
// that Teardown leaves the forwarding sysctls as they were:
//
//	left  10.77.1.2 ── vfl0 10.77.1.1   host   vfr0 10.77.2.1 ── right 10.77.2.2
//	                       vo0 10.99.0.1 (default route) ── outside
func TestForwarding_OnlyWhereGuestsNeedIt(t *testing.T) {
	ctx := context.Background()
	world(t)
	left := fmt.Sprintf("fcmleft-%d", os.Getpid())
	right := fmt.Sprintf("fcmright-%d", os.Getpid())
	for i, ns := range []string{left, right} {
		dev := []string{"vfl0", "vfr0"}[i]
		addNetns(t, ns)
		run(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
		t.Cleanup(func() { exec.Command("ip", "link", "del", dev).Run() })
		run(t, "ip", "addr", "add", fmt.Sprintf("10.77.%d.1/24", i+1), "dev", dev)
		run(t, "ip", "link", "set", dev, "up")
		run(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.77.%d.2/24", i+1), "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.77.%d.1", i+1))
	}
	startEcho(t, right, "10.77.2.2:9000", "right")
	conf := func(dev string) string { return "/proc/sys/net/ipv4/conf/" + dev + "/forwarding" }
	sysctls := []string{"/proc/sys/net/ipv4/ip_forward", conf("all"), conf("vfl0"), conf("vfr0"), conf("vo0"), conf("vl0")}
	read := func() []string {
		var v []string
		for _, p := range sysctls {
			v = append(v, sysctl(t, p))
		}
		return v
	}
	before := read()
	if !slices.Equal(before, []string{"0", "0", "0", "0", "0", "0"}) {
		t.Fatalf("forwarding %v before Setup, want all off; the setup is broken", before)
	}
	if got, err := dialFrom(left, "", "10.77.2.2:9000"); err == nil {
		t.Fatalf("left reached right before Setup (got %q); the setup is broken", got)
	}

	cfg := testConfig()
	h, err := Setup(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := addGuest(t, h, "f", 50)
	if got, err := dialFrom(g.ns, "", "198.51.100.2:9000"); err != nil || got != "10.99.0.1" {
		t.Errorf("guest to the internet = %q, %v; want it masqueraded as 10.99.0.1", got, err)
	}
	if got, err := dialFrom(left, "", "10.77.2.2:9000"); err == nil {
		t.Errorf("left reached right through the host after Setup (got %q)", got)
	}
	want := map[string]string{sysctls[0]: "0", sysctls[1]: "0", conf("fcm0"): "1",
		conf("vfl0"): "0", conf("vfr0"): "0", conf("vo0"): "1", conf("vl0"): "0"}
	for p, w := range want {
		if got := sysctl(t, p); got != w {
			t.Errorf("after Setup %s = %s, want %s", p, got, w)
		}
	}

	if err := Teardown(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if after := read(); !slices.Equal(after, before) {
		t.Errorf("forwarding after Teardown %v, want it as before Setup %v (%v)", after, before, sysctls)
	}

	// Forwarding the admin had turned on stays on.
	if err := os.WriteFile(conf("vo0"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got := sysctl(t, conf("vo0")); got != "1" {
		t.Errorf("vo0 forwarding after Teardown = %s, want 1 as the admin had it", got)
	}
	os.WriteFile(conf("vo0"), []byte("0"), 0o644)
}

func TestMergePrefixes(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tt := range []struct {
		in   []netip.Prefix
		want string
	}{
		{nil, "[]"},
		{[]netip.Prefix{p("10.0.0.0/8"), p("10.1.2.0/24")}, "[10.0.0.0-10.255.255.255]"},
		{[]netip.Prefix{p("224.0.0.0/4"), p("240.0.0.0/4"), p("0.0.0.0/8")}, "[0.0.0.0-0.255.255.255 224.0.0.0-255.255.255.255]"},
		{[]netip.Prefix{p("192.0.2.7/24"), p("192.0.3.0/24")}, "[192.0.2.0-192.0.3.255]"},
		{[]netip.Prefix{p("198.51.100.0/24"), p("192.0.2.9/32")}, "[192.0.2.9-192.0.2.9 198.51.100.0-198.51.100.255]"},
	} {
		var got []string
		for _, s := range mergePrefixes(tt.in) {
			got = append(got, addr(s.lo).String()+"-"+addr(s.hi).String())
		}
		if s := fmt.Sprint(got); s != tt.want {
			t.Errorf("mergePrefixes(%v) = %s, want %s", tt.in, s, tt.want)
		}
	}
	blocked := blockedRanges([]netip.Prefix{p("203.0.113.0/24")})
	for dst, want := range map[string]bool{"0.0.0.0/0": false, "10.99.0.0/24": true, "203.0.113.0/24": true,
		"198.51.100.0/24": false, "169.254.169.254/32": true, "172.0.0.0/8": false} {
		if got := covered(p(dst), blocked); got != want {
			t.Errorf("covered(%s, blocked) = %v, want %v", dst, got, want)
		}
	}
}
