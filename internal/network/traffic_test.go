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

// guest is a namespace wired to the bridge like a VM: its eth0 is one end of
// a veth whose other end (port) is a bridge port where a tap would be, bound
// to the guest's MAC and address as AddVM binds a tap.
type guest struct {
	ns, port string
	ip       netip.Addr
	mac      net.HardwareAddr
}

// addGuest makes guest name with address 172.16.0.<n> and MAC 02:fc:00:00:00:<n>.
func addGuest(t *testing.T, h *Host, name string, n byte) guest {
	t.Helper()
	g := guest{ns: fmt.Sprintf("fcmg%s-%d", name, os.Getpid()), port: "vb" + name,
		ip: netip.AddrFrom4([4]byte{172, 16, 0, n}), mac: net.HardwareAddr{0x02, 0xfc, 0, 0, 0, n}}
	addNetns(t, g.ns)
	run(t, "ip", "link", "add", g.port, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
	run(t, "ip", "link", "set", g.port, "master", "fcm0", "up")
	run(t, "ip", "-n", g.ns, "link", "set", "eth0", "address", g.mac.String())
	run(t, "ip", "-n", g.ns, "addr", "add", g.ip.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", g.ns, "route", "add", "default", "via", "172.16.0.1")
	if err := h.bind(g.port, g.ip, g.mac); err != nil {
		t.Fatal(err)
	}
	return g
}

// startEcho runs the echo helper in namespace ns on the addresses listen
// (separated by commas), answering reply (or the client's address if empty),
// until the test ends.
func startEcho(t *testing.T, ns, listen, reply string) {
	t.Helper()
	echo := helper(ns, "echo", "FCM_TEST_LISTEN="+listen, "FCM_TEST_REPLY="+reply)
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
}

// listenUDP answers every datagram on addr with reply until the test ends.
func listenUDP(t *testing.T, addr, reply string) {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		b := make([]byte, 100)
		for {
			_, from, err := c.ReadFrom(b)
			if err != nil {
				return
			}
			c.WriteTo([]byte(reply), from)
		}
	}()
}

// world wires the test's namespace (the host) to an "outside" namespace, its
// LAN router with the internet behind it, and a "lan" namespace on a second
// host network that is not private:
//
//	host vo0 10.99.0.1/24, default via 10.99.0.2 ── outside vo1 10.99.0.2/24, 198.51.100.2/24, lo 169.254.169.254
//	host vl0 203.0.113.1/24                        ── lan vl1 203.0.113.2/24
//
// Echo servers answer with the client's address on 198.51.100.2:9000 (the
// internet), 10.99.0.2:9000 (private), 169.254.169.254:80 (cloud metadata)
// and 203.0.113.2:9000 (a host network). Neither namespace has a route back
// to the VM subnet, so only masqueraded traffic gets answers.
func world(t *testing.T) (outside, lan string) {
	t.Helper()
	outside = fmt.Sprintf("fcmout-%d", os.Getpid())
	lan = fmt.Sprintf("fcmlan-%d", os.Getpid())
	addNetns(t, outside)
	addNetns(t, lan)
	run(t, "ip", "link", "add", "vo0", "type", "veth", "peer", "name", "vo1", "netns", outside)
	run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "vo0")
	run(t, "ip", "link", "set", "vo0", "up")
	run(t, "ip", "route", "add", "default", "via", "10.99.0.2")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "vo0").Run() })
	run(t, "ip", "-n", outside, "addr", "add", "10.99.0.2/24", "dev", "vo1")
	run(t, "ip", "-n", outside, "addr", "add", "198.51.100.2/24", "dev", "vo1")
	run(t, "ip", "-n", outside, "addr", "add", "169.254.169.254/32", "dev", "lo")
	run(t, "ip", "-n", outside, "link", "set", "vo1", "up")
	run(t, "ip", "link", "add", "vl0", "type", "veth", "peer", "name", "vl1", "netns", lan)
	run(t, "ip", "addr", "add", "203.0.113.1/24", "dev", "vl0")
	run(t, "ip", "link", "set", "vl0", "up")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "vl0").Run() })
	run(t, "ip", "-n", lan, "addr", "add", "203.0.113.2/24", "dev", "vl1")
	run(t, "ip", "-n", lan, "link", "set", "vl1", "up")
	startEcho(t, outside, "198.51.100.2:9000,10.99.0.2:9000,169.254.169.254:80", "")
	startEcho(t, lan, "203.0.113.2:9000", "")
	return outside, lan
}

// sysctl reads a sysctl by its /proc/sys path.
func sysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestTraffic_GuestThroughBridge checks what a guest namespace on the bridge
// can reach: on the host only the allow-list, beyond it the internet but not
// private, link-local or host networks unless allowed.
func TestTraffic_GuestThroughBridge(t *testing.T) {
	ctx := context.Background()
	outside, lan := world(t) // before Setup: it reads the routes and addresses
	cfg := testConfig()
	h := setup(t, cfg)
	g := addGuest(t, h, "a", 50)
	run(t, "ip", "-n", g.ns, "addr", "add", "172.16.0.99/24", "dev", "eth0")

	// Host services on every host address: 80 is allowed, 8080, 7777 and UDP are not.
	listen(t, ":80", "web")
	listen(t, ":7777", "api")
	listen(t, ":8080", "other")
	listenUDP(t, ":5353", "udp")

	// The test's own namespace and the outside reach everything: the rules only bind guests.
	if got, err := dialFrom("", "", "172.16.0.1:7777"); err != nil || got != "api" {
		t.Fatalf("host to its own 7777 = %q, %v; the setup is broken", got, err)
	}
	for _, dst := range []string{"198.51.100.2:9000", "10.99.0.2:9000", "169.254.169.254:80", "203.0.113.2:9000"} {
		if _, err := dialFrom("", "", dst); err != nil {
			t.Fatalf("host to %s: %v; the setup is broken", dst, err)
		}
	}
	if got, err := dialFrom(outside, "", "10.99.0.1:8080"); err != nil || got != "other" {
		t.Fatalf("outside to host 8080 = %q, %v; want it reachable (only guests are barred)", got, err)
	}
	if got, err := udpFrom(outside, "10.99.0.1:5353"); err != nil || got != "udp" {
		t.Fatalf("outside to host udp 5353 = %q, %v; want it reachable", got, err)
	}

	t.Run("HostAllowListReachable", func(t *testing.T) {
		for _, dst := range []string{"172.16.0.1:80", "10.99.0.1:80"} {
			if got, err := dialFrom(g.ns, "", dst); err != nil || got != "web" {
				t.Errorf("guest to %s = %q, %v; want web", dst, got, err)
			}
		}
		if err := pingFrom(g.ns, "172.16.0.1"); err != nil {
			t.Errorf("guest cannot ping its gateway: %v", err)
		}
	})
	// Issue 20 (b): the allowed ports are open on the host's routable
	// addresses only, not on a link-local address of the host (a metadata-like
	// service, as clouds bind).
	t.Run("HostLocalAddressesUnreachable", func(t *testing.T) {
		run(t, "ip", "addr", "add", "169.254.170.2/32", "dev", "lo")
		t.Cleanup(func() { exec.Command("ip", "addr", "del", "169.254.170.2/32", "dev", "lo").Run() })
		if got, err := dialFrom("", "", "169.254.170.2:80"); err != nil || got != "web" {
			t.Fatalf("host to its own 169.254.170.2:80 = %q, %v; the setup is broken", got, err)
		}
		if got, err := dialFrom(g.ns, "", "169.254.170.2:80"); err == nil {
			t.Errorf("guest reached host TCP 169.254.170.2:80 (got %q)", got)
		}
		if got, err := dialFrom(g.ns, "", "172.16.0.1:80"); err != nil || got != "web" {
			t.Errorf("guest to the gateway's 80 = %q, %v; want web", got, err)
		}
	})
	t.Run("HostPortsOutsideAllowListUnreachable", func(t *testing.T) {
		for _, dst := range []string{"172.16.0.1:8080", "10.99.0.1:8080", "172.16.0.1:7777", "203.0.113.1:7777"} {
			if got, err := dialFrom(g.ns, "", dst); err == nil {
				t.Errorf("guest reached host TCP %s (got %q)", dst, got)
			}
		}
		for _, dst := range []string{"172.16.0.1:5353", "10.99.0.1:5353"} {
			if got, err := udpFrom(g.ns, dst); err == nil {
				t.Errorf("guest reached host UDP %s (got %q)", dst, got)
			}
		}
	})
	t.Run("Masquerade", func(t *testing.T) {
		got, err := dialFrom(g.ns, "172.16.0.50", "198.51.100.2:9000")
		if err != nil {
			t.Fatalf("guest to the internet: %v", err)
		}
		if got != "10.99.0.1" {
			t.Errorf("outside saw the guest as %q, want 10.99.0.1 (masqueraded)", got)
		}
	})
	blocked := []string{"169.254.169.254:80", "10.99.0.2:9000", "203.0.113.2:9000"}
	t.Run("BlockedEgressUnreachable", func(t *testing.T) {
		for _, dst := range blocked {
			if got, err := dialFrom(g.ns, "", dst); err == nil {
				t.Errorf("guest reached %s (it saw %q)", dst, got)
			}
		}
	})
	t.Run("AllowEgressOpensThem", func(t *testing.T) {
		open := cfg
		open.AllowEgress = []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"),
			netip.MustParsePrefix("10.99.0.2/32"), netip.MustParsePrefix("203.0.113.0/24")}
		if _, err := Setup(ctx, open); err != nil {
			t.Fatal(err)
		}
		for _, dst := range blocked {
			if _, err := dialFrom(g.ns, "", dst); err != nil {
				t.Errorf("guest cannot reach %s with AllowEgress: %v", dst, err)
			}
		}
		if got := sysctl(t, "/proc/sys/net/ipv4/conf/vl0/forwarding"); got != "1" {
			t.Errorf("vl0 forwarding = %s with 203.0.113.0/24 allowed, want 1 (replies come in there)", got)
		}
		if _, err := Setup(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		for _, dst := range blocked {
			if got, err := dialFrom(g.ns, "", dst); err == nil {
				t.Errorf("guest reached %s after AllowEgress was taken back (it saw %q)", dst, got)
			}
		}
		if got := sysctl(t, "/proc/sys/net/ipv4/conf/vl0/forwarding"); got != "0" {
			t.Errorf("vl0 forwarding = %s after AllowEgress was taken back, want 0", got)
		}
	})
	t.Run("SpoofedSourceDropped", func(t *testing.T) {
		if got, err := dialFrom(g.ns, "172.16.0.99", "198.51.100.2:9000"); err == nil {
			t.Errorf("guest reached outside from 172.16.0.99, not its address (outside saw %q)", got)
		}
	})
	t.Run("RemovedAddressDropped", func(t *testing.T) {
		if err := h.RemoveVM(ctx, "", g.ip); err != nil {
			t.Fatal(err)
		}
		if got, err := dialFrom(g.ns, "172.16.0.50", "198.51.100.2:9000"); err == nil {
			t.Errorf("guest reached outside after RemoveVM (outside saw %q)", got)
		}
		if err := h.bind(g.port, g.ip, g.mac); err != nil {
			t.Fatal(err)
		}
		if _, err := dialFrom(g.ns, "172.16.0.50", "198.51.100.2:9000"); err != nil {
			t.Errorf("guest cannot reach outside after binding again: %v", err)
		}
	})
	t.Run("OutsideCannotOpenConnectionsToGuest", func(t *testing.T) {
		startEcho(t, g.ns, "172.16.0.50:9001", "")
		if got, err := dialFrom("", "", "172.16.0.50:9001"); err != nil || got != "172.16.0.1" {
			t.Errorf("host to guest = %q, %v; want the guest to see 172.16.0.1", got, err)
		}
		run(t, "ip", "-n", outside, "route", "add", "172.16.0.0/24", "via", "10.99.0.1")
		run(t, "ip", "-n", lan, "route", "add", "172.16.0.0/24", "via", "203.0.113.1")
		for _, ns := range []string{outside, lan} {
			if got, err := dialFrom(ns, "", "172.16.0.50:9001"); err == nil {
				t.Errorf("%s opened a connection to the guest (guest saw %q)", ns, got)
			}
		}
	})
}
