package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// addNetns makes a network namespace with lo up, deleted when the test ends
// (taking its end of any veth pair, and so the pair, with it).
func addNetns(t *testing.T, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// listen serves reply on addr in the test's namespace until the test ends.
func listen(t *testing.T, addr, reply string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go serve(l, func(net.Conn) string { return reply })
}

// dialFrom connects from namespace ns (and source address src, if not empty)
// to dst and returns what the server sent, or an error if it cannot connect.
func dialFrom(ns, src, dst string) (string, error) {
	out, err := helper(ns, "dial", "FCM_TEST_SRC="+src, "FCM_TEST_DST="+dst).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// TestTraffic_GuestThroughBridge wires a guest namespace to the bridge and an
// "outside world" namespace to the test's namespace (standing in for the
// host), and checks what the guest can reach:
//
//	guest ns (vg1: 172.16.0.50, .99) ── vb0 ─ fcm0 (172.16.0.1)   test ns
//	outside ns (vo1: 10.99.0.2)      ── vo0 (10.99.0.1)            test ns
func TestTraffic_GuestThroughBridge(t *testing.T) {
	ctx := context.Background()
	h := setup(t, testConfig())
	guest := fmt.Sprintf("fcmguest-%d", os.Getpid())
	outside := fmt.Sprintf("fcmout-%d", os.Getpid())
	addNetns(t, guest)
	addNetns(t, outside)

	// Guest: a veth whose host end is a bridge port, where a tap would be.
	run(t, "ip", "link", "add", "vb0", "type", "veth", "peer", "name", "vg1", "netns", guest)
	run(t, "ip", "link", "set", "vb0", "master", "fcm0", "up")
	run(t, "ip", "-n", guest, "addr", "add", "172.16.0.50/24", "dev", "vg1")
	run(t, "ip", "-n", guest, "addr", "add", "172.16.0.99/24", "dev", "vg1")
	run(t, "ip", "-n", guest, "link", "set", "vg1", "up")
	run(t, "ip", "-n", guest, "route", "add", "default", "via", "172.16.0.1")

	// Outside world: no route back to 172.16.0.0/24, so only masqueraded
	// traffic can get answers.
	run(t, "ip", "link", "add", "vo0", "type", "veth", "peer", "name", "vo1", "netns", outside)
	run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "vo0")
	run(t, "ip", "link", "set", "vo0", "up")
	run(t, "ip", "-n", outside, "addr", "add", "10.99.0.2/24", "dev", "vo1")
	run(t, "ip", "-n", outside, "link", "set", "vo1", "up")
	echo := helper(outside, "echo", "FCM_TEST_LISTEN=10.99.0.2:9000")
	stdout, err := echo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	echo.Stderr = os.Stderr
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Process.Kill(); echo.Wait() })
	waitReady(t, stdout)

	// Host services on every host address: 7777 is protected, 8080 is not.
	listen(t, ":7777", "api")
	listen(t, ":8080", "web")

	// Only .50 is a known VM address; the tap is a stand-in whose only job
	// here is to put .50 in the set through the public API.
	if err := h.AddVM(ctx, "tap_guest050", netip.MustParseAddr("172.16.0.50")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.RemoveVM(ctx, "tap_guest050", netip.Addr{}) })

	// The test's own namespace reaches everything: the rules only bind guests.
	if got, err := dialFrom("", "", "172.16.0.1:7777"); err != nil || got != "api" {
		t.Fatalf("host to its own 7777 = %q, %v; the setup is broken", got, err)
	}
	if got, err := dialFrom(outside, "", "10.99.0.1:7777"); err != nil || got != "api" {
		t.Fatalf("outside to host 7777 = %q, %v; want it reachable (only guests are barred)", got, err)
	}

	t.Run("UnprotectedPortReachable", func(t *testing.T) {
		for _, dst := range []string{"172.16.0.1:8080", "10.99.0.1:8080"} {
			if got, err := dialFrom(guest, "", dst); err != nil || got != "web" {
				t.Errorf("guest to %s = %q, %v; want web", dst, got, err)
			}
		}
	})
	t.Run("ProtectedPortDropped", func(t *testing.T) {
		for _, dst := range []string{"172.16.0.1:7777", "10.99.0.1:7777"} {
			if got, err := dialFrom(guest, "", dst); err == nil {
				t.Errorf("guest reached protected %s (got %q)", dst, got)
			}
		}
	})
	t.Run("Masquerade", func(t *testing.T) {
		got, err := dialFrom(guest, "172.16.0.50", "10.99.0.2:9000")
		if err != nil {
			t.Fatalf("guest to outside: %v", err)
		}
		if got != "10.99.0.1" {
			t.Errorf("outside saw the guest as %q, want 10.99.0.1 (masqueraded)", got)
		}
	})
	t.Run("SpoofedSourceDropped", func(t *testing.T) {
		if got, err := dialFrom(guest, "172.16.0.99", "10.99.0.2:9000"); err == nil {
			t.Errorf("guest reached outside from 172.16.0.99, not a VM address (outside saw %q)", got)
		}
	})
	t.Run("RemovedAddressDropped", func(t *testing.T) {
		if err := h.RemoveVM(ctx, "tap_guest050", netip.MustParseAddr("172.16.0.50")); err != nil {
			t.Fatal(err)
		}
		if got, err := dialFrom(guest, "172.16.0.50", "10.99.0.2:9000"); err == nil {
			t.Errorf("guest reached outside after RemoveVM (outside saw %q)", got)
		}
		if err := h.AddVM(ctx, "tap_guest050", netip.MustParseAddr("172.16.0.50")); err != nil {
			t.Fatal(err)
		}
		if _, err := dialFrom(guest, "172.16.0.50", "10.99.0.2:9000"); err != nil {
			t.Errorf("guest cannot reach outside after AddVM again: %v", err)
		}
	})
	t.Run("OutsideCannotOpenConnectionsToGuest", func(t *testing.T) {
		listenGuest := helper(guest, "echo", "FCM_TEST_LISTEN=172.16.0.50:9001")
		out, err := listenGuest.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := listenGuest.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { listenGuest.Process.Kill(); listenGuest.Wait() }()
		waitReady(t, out)
		if got, err := dialFrom("", "", "172.16.0.50:9001"); err != nil || got != "172.16.0.1" {
			t.Errorf("host to guest = %q, %v; want the guest to see 172.16.0.1", got, err)
		}
		run(t, "ip", "-n", outside, "route", "add", "172.16.0.0/24", "via", "10.99.0.1")
		if got, err := dialFrom(outside, "", "172.16.0.50:9001"); err == nil {
			t.Errorf("outside opened a connection to the guest (guest saw %q)", got)
		}
	})
}
