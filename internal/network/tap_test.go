package network

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// runHelper is the test binary acting as a helper program, selected by
// helperEnv, with its arguments in further environment variables:
//
//	addvm: AddVM(FCM_TEST_TAP, FCM_TEST_IP) with testConfig, then exit, so
//	       the test sees whether the tap outlives the process that made it.
//	dial:  connect from FCM_TEST_SRC (may be empty) to FCM_TEST_DST, print
//	       what the server sends; exit 1 if the connection fails.
//	echo:  listen on FCM_TEST_LISTEN (addresses separated by commas), print
//	       "ready", and send every client FCM_TEST_REPLY, or if it is empty
//	       the address the client connected from.
//	udp, ping, rawsend: see runPacketHelper.
func runHelper(mode string) int {
	switch mode {
	case "addvm":
		h := &Host{cfg: testConfig()}
		err := h.AddVM(context.Background(), os.Getenv("FCM_TEST_TAP"), netip.MustParseAddr(os.Getenv("FCM_TEST_IP")), testMAC)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "dial":
		d := net.Dialer{Timeout: 2 * time.Second}
		if src := os.Getenv("FCM_TEST_SRC"); src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err := d.Dial("tcp", os.Getenv("FCM_TEST_DST"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(c)
		fmt.Print(string(b))
		return 0
	case "echo":
		var ls []net.Listener
		for _, a := range strings.Split(os.Getenv("FCM_TEST_LISTEN"), ",") {
			l, err := net.Listen("tcp", a)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			ls = append(ls, l)
		}
		fmt.Println("ready")
		reply := os.Getenv("FCM_TEST_REPLY")
		for _, l := range ls[1:] {
			go serve(l, func(c net.Conn) string { return echoReply(c, reply) })
		}
		serve(ls[0], func(c net.Conn) string { return echoReply(c, reply) })
		return 0
	case "udp", "ping", "rawsend":
		return runPacketHelper(mode)
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", mode)
	return 2
}

// echoReply is reply, or if it is empty the client's address.
func echoReply(c net.Conn, reply string) string {
	if reply != "" {
		return reply
	}
	return c.RemoteAddr().(*net.TCPAddr).IP.String()
}

// serve answers every connection on l with reply(conn) until l is closed.
func serve(l net.Listener, reply func(net.Conn) string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(c, reply(c))
		c.Close()
	}
}

// helper runs the test binary as helper mode with env added, optionally in
// the network namespace ns.
func helper(ns, mode string, env ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self)
	if ns != "" {
		cmd = exec.Command("ip", "netns", "exec", ns, self)
	}
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	return cmd
}

func TestAddVM_PersistentTapOnBridge(t *testing.T) {
	ctx := context.Background()
	h := setup(t, testConfig())
	const tap = "tap_ab12cd34"
	ip := netip.MustParseAddr("172.16.0.30")
	t.Cleanup(func() { exec.Command("ip", "link", "del", tap).Run() })

	mac := showLink(t, "fcm0").Address

	// Made by a process that exits: the tap must persist without an open fd.
	if out, err := helper("", "addvm", "FCM_TEST_TAP="+tap, "FCM_TEST_IP="+ip.String()).CombinedOutput(); err != nil {
		t.Fatalf("AddVM in a child process: %v\n%s", err, out)
	}
	check := func(when string) {
		t.Helper()
		l := showLink(t, tap)
		if l == nil {
			t.Fatalf("%s: tap %s missing", when, tap)
		}
		if l.LinkInfo.Kind != "tun" || l.LinkInfo.Data.Type != "tap" || !l.LinkInfo.Data.Persist {
			t.Errorf("%s: %s is %s/%s persist=%v, want a persistent tap", when, tap, l.LinkInfo.Kind, l.LinkInfo.Data.Type, l.LinkInfo.Data.Persist)
		}
		if l.Master != "fcm0" {
			t.Errorf("%s: %s master %q, want fcm0", when, tap, l.Master)
		}
		if !slices.Contains(l.Flags, "UP") {
			t.Errorf("%s: %s flags %v, want UP", when, tap, l.Flags)
		}
		if set := run(t, "nft", "list", "set", "inet", "fcm", "vms"); !strings.Contains(set, "172.16.0.30") {
			t.Errorf("%s: 172.16.0.30 not in set:\n%s", when, set)
		}
		if addrs, err := h.VMAddrs(); err != nil || !slices.Equal(addrs, []netip.Addr{ip}) {
			t.Errorf("%s: VMAddrs = %v, %v; want [%s]", when, addrs, err, ip)
		}
		if names, err := h.TapNames(); err != nil || !slices.Contains(names, tap) {
			t.Errorf("%s: TapNames = %v, %v; want it to contain %s", when, names, err, tap)
		}
		if got := showLink(t, "fcm0").Address; got != mac {
			t.Errorf("%s: bridge MAC changed from %s to %s (guests' ARP caches go stale)", when, mac, got)
		}
		if set := run(t, "nft", "list", "set", "bridge", "fcm-l2", "ports"); !strings.Contains(set, `"tap_ab12cd34" . 02:fc:00:00:00:99 . 172.16.0.30`) {
			t.Errorf("%s: tap not bound to its MAC and address:\n%s", when, set)
		}
		if got, want := neighbour(t, ip), testMAC.String()+" PERMANENT"; got != want {
			t.Errorf("%s: host's neighbour entry of %s = %q, want %q", when, ip, got, want)
		}
		if link := run(t, "bridge", "-d", "link", "show", "dev", tap); !strings.Contains(link, "isolated on") {
			t.Errorf("%s: tap is not an isolated port:\n%s", when, link)
		}
	}
	check("after AddVM in a child")

	// Idempotent, and it repairs a tap that was detached and brought down.
	if err := h.AddVM(ctx, tap, ip, testMAC); err != nil {
		t.Fatalf("second AddVM: %v", err)
	}
	check("after second AddVM")
	run(t, "ip", "link", "set", tap, "nomaster")
	run(t, "ip", "link", "set", tap, "down")
	if err := h.AddVM(ctx, tap, ip, testMAC); err != nil {
		t.Fatalf("AddVM over a detached tap: %v", err)
	}
	check("after AddVM over a detached tap")
	if n := strings.Count(run(t, "nft", "list", "set", "inet", "fcm", "vms"), "172.16.0.30"); n != 1 {
		t.Errorf("172.16.0.30 appears %d times in the set, want 1", n)
	}

	if err := h.RemoveVM(ctx, tap, ip); err != nil {
		t.Fatalf("RemoveVM: %v", err)
	}
	if showLink(t, tap) != nil {
		t.Errorf("tap %s still exists after RemoveVM", tap)
	}
	if set := run(t, "nft", "list", "table", "bridge", "fcm-l2"); strings.Contains(set, "tap_ab12cd34") {
		t.Errorf("tap still bound after RemoveVM:\n%s", set)
	}
	if got := neighbour(t, ip); got != "" {
		t.Errorf("host's neighbour entry of %s after RemoveVM = %q, want none", ip, got)
	}
	if set := run(t, "nft", "list", "set", "inet", "fcm", "vms"); strings.Contains(set, "172.16.0.30") {
		t.Errorf("172.16.0.30 still in set after RemoveVM:\n%s", set)
	}
	if addrs, err := h.VMAddrs(); err != nil || len(addrs) != 0 {
		t.Errorf("VMAddrs after RemoveVM = %v, %v; want none", addrs, err)
	}
	if names, err := h.TapNames(); err != nil || slices.Contains(names, tap) {
		t.Errorf("TapNames after RemoveVM = %v, %v; want no %s", names, err, tap)
	}
	if err := h.RemoveVM(ctx, tap, ip); err != nil {
		t.Errorf("second RemoveVM: %v", err)
	}
	if got := showLink(t, "fcm0").Address; got != mac {
		t.Errorf("bridge MAC changed from %s to %s after RemoveVM", mac, got)
	}
}

func TestTapNames_ListsTapLinksAttachedOrNot(t *testing.T) {
	h := setup(t, testConfig())
	run(t, "ip", "tuntap", "add", "tap_leaked01", "mode", "tap")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "tap_leaked01").Run() })
	run(t, "ip", "tuntap", "add", "notatap0", "mode", "tap")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "notatap0").Run() })
	if err := h.AddVM(context.Background(), "tap_onbridge", netip.MustParseAddr("172.16.0.31"), testMAC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.RemoveVM(context.Background(), "tap_onbridge", netip.Addr{}) })
	names, err := h.TapNames()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tap_leaked01", "tap_onbridge"}; !slices.Equal(names, want) {
		t.Errorf("TapNames = %v, want %v", names, want)
	}
	// A leaked tap is removed without knowing its address.
	if err := h.RemoveVM(context.Background(), "tap_leaked01", netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if showLink(t, "tap_leaked01") != nil {
		t.Errorf("tap_leaked01 still exists after RemoveVM")
	}
}

func TestAddVM_RejectsBadInput(t *testing.T) {
	ctx := context.Background()
	h := setup(t, testConfig())
	run(t, "ip", "link", "add", "tap_veth0", "type", "veth", "peer", "name", "tap_veth1")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "tap_veth0").Run() })
	for _, tt := range []struct {
		tap, ip, wantErr string
	}{
		{"tap_toolongname1", "172.16.0.40", "longer than 15"},
		{"tap_x/y", "172.16.0.40", "invalid character"},
		{"tap_outside", "10.0.0.40", "outside subnet"},
		{"tap_gateway", "172.16.0.1", "reserved"},
		{"tap_v6", "fd00::1", "not IPv4"},
		{"tap_veth0", "172.16.0.40", "not a tap"},
	} {
		err := h.AddVM(ctx, tt.tap, netip.MustParseAddr(tt.ip), testMAC)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("AddVM(%s, %s) = %v, want error containing %q", tt.tap, tt.ip, err, tt.wantErr)
		}
	}
	if err := h.RemoveVM(ctx, "tap_veth0", netip.Addr{}); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("RemoveVM of a veth = %v, want a 'not a tap' error", err)
	}
	if showLink(t, "tap_veth0") == nil {
		t.Errorf("RemoveVM deleted a veth")
	}
	if addrs, _ := h.VMAddrs(); len(addrs) != 0 {
		t.Errorf("rejected AddVMs left addresses in the set: %v", addrs)
	}
	if err := Teardown(ctx, testConfig()); err != nil {
		t.Fatal(err)
	}
	err := h.AddVM(ctx, "tap_nobridge", netip.MustParseAddr("172.16.0.41"), testMAC)
	if err == nil || !strings.Contains(err.Error(), "fcm0") {
		t.Errorf("AddVM without the bridge = %v, want an error naming fcm0", err)
	}
}

// waitReady reads the helper's stdout until it says "ready".
func waitReady(t *testing.T, r io.Reader) {
	t.Helper()
	done := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(r)
		done <- s.Scan() && s.Text() == "ready"
		io.Copy(io.Discard, r)
	}()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("helper did not start")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not start within 10s")
	}
}
