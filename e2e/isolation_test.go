package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/guest"
	"golang.org/x/crypto/ssh"
)

// answer serves text to every TCP client of ln until the test ends.
func answer(ln net.Listener, text string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, text)
			c.Close()
		}
	}()
}

// TestIsolation_GuestReachesOnlyWhatItShould boots one VM in the daemon and
// checks from inside it what it reaches: its gateway by ping, Caddy's port on
// the host and the internet, but not the host's API port (as if the API
// listened on every address), a UDP service on the host, nor the cloud
// metadata address, whether beyond the host or bound on the host itself (a
// link-local address on its lo: the allowed ports are open on the host's
// routable addresses only).
func TestIsolation_GuestReachesOnlyWhatItShould(t *testing.T) {
	inet := startInternet(t) // before the daemon, which picks its uplinks at start
	answer(inet.listen(t, "198.51.100.1:80"), "internet")
	answer(inet.listen(t, "169.254.169.254:80"), "metadata")
	d, work := daemonWithVM(t, "iso1")
	vm := d.vms(work)["iso1"]

	// Host services on the bridge's address, which exists now: a stand-in
	// for Caddy on 80, the API's port and a UDP service.
	_, apiPort, _ := net.SplitHostPort(daemonListen)
	for port, text := range map[string]string{"80": "caddy", apiPort: "api"} {
		ln, err := net.Listen("tcp", net.JoinHostPort("172.20.0.1", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		answer(ln, text)
	}
	udp, err := net.ListenPacket("udp", "172.20.0.1:5353")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		b := make([]byte, 100)
		for {
			_, from, err := udp.ReadFrom(b)
			if err != nil {
				return
			}
			udp.WriteTo([]byte("udp"), from)
		}
	}()
	// They all answer the host itself.
	for _, addr := range []string{"172.20.0.1:" + apiPort, "169.254.169.254:80", "198.51.100.1:80"} {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("host to %s: %v; the setup is broken", addr, err)
		}
		c.Close()
	}

	key, err := guest.LoadOrCreateKey(filepath.Join(d.dataDir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.HostKey))
	if err != nil {
		t.Fatal(err)
	}
	c := &guest.Client{Addr: net.JoinHostPort(vm.IP, "22"), Signer: key, HostKey: hk}
	defer c.Close()
	ctx, cancel := withTimeout(2 * time.Minute)
	defer cancel()
	// One script, one line per check: what answered, or "blocked".
	script := `tcp() { timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && head -n1 <&3" 2>/dev/null || echo blocked; }
echo "ping=$(ping -c1 -W5 172.20.0.1 >/dev/null 2>&1 && echo ok || echo blocked)"
echo "caddy=$(tcp 172.20.0.1 80)"
echo "internet=$(tcp 198.51.100.1 80)"
echo "api=$(tcp 172.20.0.1 ` + apiPort + `)"
echo "metadata=$(tcp 169.254.169.254 80)"
echo "udp=$(timeout 5 python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"hi", ("172.20.0.1", 5353))
print(s.recv(100).decode())' 2>/dev/null || echo blocked)"
`
	out, err := c.Run(ctx, script)
	if err != nil {
		t.Fatalf("checks in the VM: %v\n%s", err, out)
	}
	t.Logf("from the VM:\n%s", out)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			got[k] = v
		}
	}
	for k, want := range map[string]string{"ping": "ok", "caddy": "caddy", "internet": "internet",
		"api": "blocked", "metadata": "blocked", "udp": "blocked"} {
		if got[k] != want {
			t.Errorf("from the VM, %s = %q, want %q", k, got[k], want)
		}
	}

	// Issue 20 (b): a service on 169.254.169.254:80 bound on the host itself
	// (the kernel here has no dummy links: the address goes on lo). The host
	// reaches it; the guest, through the 80/443 allow-list, does not, while
	// the host's routable address's 80 stays open to it.
	sh(t, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", "169.254.169.254/32", "dev", "lo").Run() })
	ln, err := net.Listen("tcp", "169.254.169.254:80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	answer(ln, "host-metadata")
	if got := readLine(t, "169.254.169.254:80"); got != "host-metadata" {
		t.Fatalf("host to its own 169.254.169.254:80 = %q; the setup is broken", got)
	}
	out, err = c.Run(ctx, `tcp() { timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && head -n1 <&3" 2>/dev/null || echo blocked; }
echo "hostlocal=$(tcp 169.254.169.254 80)"
echo "caddy=$(tcp 172.20.0.1 80)"
`)
	if err != nil {
		t.Fatalf("checks in the VM: %v\n%s", err, out)
	}
	t.Logf("from the VM, with 169.254.169.254 on the host:\n%s", out)
	if s := string(out); !strings.Contains(s, "hostlocal=blocked\n") || !strings.Contains(s, "caddy=caddy\n") {
		t.Errorf("from the VM, want hostlocal=blocked and caddy=caddy:\n%s", s)
	}
}

// readLine dials addr from the test's namespace and returns the first line
// it sends.
func readLine(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}
