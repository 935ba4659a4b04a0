package network

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// neighbour returns the host's neighbour entry of ip on fcm0 as "lladdr state".
func neighbour(t *testing.T, ip netip.Addr) string {
	t.Helper()
	out := run(t, "ip", "-j", "neigh", "show", ip.String(), "dev", "fcm0")
	var ns []struct {
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		t.Fatalf("parse %q: %v", out, err)
	}
	if len(ns) != 1 {
		return ""
	}
	return ns[0].LLAddr + " " + strings.Join(ns[0].State, ",")
}

// TestL2_GuestsBoundToTheirAddresses has guest A try to take guest B's
// address, send from B's MAC and advertise itself as an IPv6 router, and
// checks the host and B do not fall for it; then that guests cannot reach
// each other unless GuestToGuest.
func TestL2_GuestsBoundToTheirAddresses(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	h := setup(t, cfg)
	a := addGuest(t, h, "a", 50)
	b := addGuest(t, h, "b", 51)
	startEcho(t, b.ns, "172.16.0.51:9000", "B")
	listen(t, ":80", "web")
	brMAC := bridgeMAC(cfg.Gateway())

	if got, err := dialFrom("", "", "172.16.0.51:9000"); err != nil || got != "B" {
		t.Fatalf("host to B = %q, %v; the setup is broken", got, err)
	}
	if got, want := neighbour(t, b.ip), b.mac.String()+" PERMANENT"; got != want {
		t.Errorf("host's neighbour entry of B = %q, want %q (pinned by AddVM)", got, want)
	}

	t.Run("GuestsCannotReachEachOther", func(t *testing.T) {
		if got, err := dialFrom(a.ns, "", "172.16.0.51:9000"); err == nil {
			t.Errorf("A reached B directly (got %q)", got)
		}
		// Nor through the host, with the gateway as next hop.
		run(t, "ip", "-n", a.ns, "route", "add", "172.16.0.51/32", "via", "172.16.0.1")
		defer run(t, "ip", "-n", a.ns, "route", "del", "172.16.0.51/32")
		if got, err := dialFrom(a.ns, "", "172.16.0.51:9000"); err == nil {
			t.Errorf("A reached B routed through the host (got %q)", got)
		}
	})
	t.Run("ARPSpoofing", func(t *testing.T) {
		run(t, "ip", "-n", a.ns, "addr", "add", "172.16.0.51/24", "dev", "eth0")
		defer run(t, "ip", "-n", a.ns, "addr", "del", "172.16.0.51/24", "dev", "eth0")
		startEcho(t, a.ns, "172.16.0.51:9000", "A")
		time.Sleep(1100 * time.Millisecond) // past the neighbour entries' locktime
		for range 3 {
			sendFrames(t, a.ns, "eth0",
				arpFrame(1, a.mac, b.ip, broadcast, b.ip),                          // gratuitous request
				arpFrame(2, a.mac, b.ip, brMAC, netip.MustParseAddr("172.16.0.1")), // reply to the host
			)
		}
		time.Sleep(200 * time.Millisecond)
		if got, err := dialFrom("", "", "172.16.0.51:9000"); err != nil || got != "B" {
			t.Errorf("host to B's address after A's ARP = %q, %v; want B", got, err)
		}
		if got, want := neighbour(t, b.ip), b.mac.String()+" PERMANENT"; got != want {
			t.Errorf("host's neighbour entry of B after A's ARP = %q, want %q", got, want)
		}
		if got, err := dialFrom(a.ns, "172.16.0.51", "172.16.0.1:80"); err == nil {
			t.Errorf("A reached the host from B's address (got %q)", got)
		}
		if got, err := dialFrom(a.ns, "172.16.0.50", "172.16.0.1:80"); err != nil || got != "web" {
			t.Errorf("A from its own address to the host = %q, %v; want web", got, err)
		}
	})
	t.Run("MACSpoofing", func(t *testing.T) {
		run(t, "ip", "-n", a.ns, "link", "set", "eth0", "address", b.mac.String())
		defer run(t, "ip", "-n", a.ns, "link", "set", "eth0", "address", a.mac.String())
		if got, err := dialFrom(a.ns, "172.16.0.50", "172.16.0.1:80"); err == nil {
			t.Errorf("A reached the host sending from B's MAC (got %q)", got)
		}
		if got, err := dialFrom("", "", "172.16.0.51:9000"); err != nil || got != "B" {
			t.Errorf("host to B after A sent from B's MAC = %q, %v; want B", got, err)
		}
	})
	t.Run("RouterAdvertisementIgnored", func(t *testing.T) {
		// Were IPv6 on: the host ignores RAs until its link-local address
		// has passed duplicate address detection.
		for i := 0; i < 50 && strings.Contains(run(t, "ip", "-6", "addr", "show", "dev", "fcm0"), "tentative"); i++ {
			time.Sleep(100 * time.Millisecond)
		}
		before := run(t, "ip", "-6", "route", "show", "table", "all")
		sendFrames(t, a.ns, "eth0", raFrame(a.mac, netip.MustParsePrefix("2001:db8:1::/64")))
		time.Sleep(500 * time.Millisecond)
		if after := run(t, "ip", "-6", "route", "show", "table", "all"); after != before {
			t.Errorf("a guest's router advertisement changed the host's IPv6 routes:\n--- before\n%s--- after\n%s", before, after)
		}
		if addrs := run(t, "ip", "-6", "addr", "show", "dev", "fcm0"); strings.Contains(addrs, "inet6") {
			t.Errorf("fcm0 has IPv6 addresses:\n%s", addrs)
		}
	})
	t.Run("GuestToGuestOption", func(t *testing.T) {
		open := cfg
		open.GuestToGuest = true
		if _, err := Setup(ctx, open); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := Setup(ctx, cfg); err != nil {
				t.Fatal(err)
			}
		}()
		if got, err := dialFrom(a.ns, "", "172.16.0.51:9000"); err != nil || got != "B" {
			t.Errorf("A to B with GuestToGuest = %q, %v; want B", got, err)
		}
	})
	if got, err := dialFrom(a.ns, "", "172.16.0.51:9000"); err == nil {
		t.Errorf("A reached B after GuestToGuest was turned off again (got %q)", got)
	}
	if err := h.RemoveVM(ctx, "", b.ip); err != nil {
		t.Fatal(err)
	}
	if got := neighbour(t, b.ip); strings.Contains(got, "PERMANENT") {
		t.Errorf("host's neighbour entry of B after RemoveVM = %q, want it unpinned", got)
	}
}

// TestL2_UnboundPortsOfOtherBridgesUntouched checks the bridge table leaves
// alone frames on a bridge that is not fcm's.
func TestL2_UnboundPortsOfOtherBridgesUntouched(t *testing.T) {
	setup(t, testConfig())
	ns := fmt.Sprintf("fcmoth-%d", os.Getpid())
	addNetns(t, ns)
	run(t, "ip", "link", "add", "othbr0", "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "othbr0").Run() })
	run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "othbr0")
	run(t, "ip", "link", "set", "othbr0", "up")
	run(t, "ip", "link", "add", "othp0", "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(t, "ip", "link", "set", "othp0", "master", "othbr0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	listen(t, "192.0.2.1:8081", "other bridge")
	if got, err := dialFrom(ns, "", "192.0.2.1:8081"); err != nil || got != "other bridge" {
		t.Errorf("a namespace on another bridge to the host = %q, %v; want it untouched by fcm", got, err)
	}
}
