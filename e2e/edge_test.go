package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/edge/edgetest"
)

const (
	edgeDomain = "e2e.test"
	edgeAddr   = "10.123.0.1" // on the namespace's lo; every test name resolves to it
)

// edgeFlags point the daemon at the test's Caddy and Pebble.
func edgeFlags(env *edgetest.Env) []string {
	return []string{"--caddy-admin", env.Admin(), "--domain", edgeDomain,
		"--acme-ca", edgetest.ACMEDir, "--acme-ca-root", env.CARoot, "--acme-email", "ops@e2e.test"}
}

// curl fetches url with the real curl, trusting Pebble's root and resolving
// every name to the edge's address. It returns the body and the HTTP status.
func curl(t *testing.T, env *edgetest.Env, url string, extra ...string) (string, string) {
	t.Helper()
	host := strings.SplitN(strings.SplitN(url, "://", 2)[1], "/", 2)[0]
	args := append([]string{"-sS", "--max-time", "10", "--cacert", env.RootFile,
		"--resolve", host + ":443:" + edgeAddr, "--resolve", host + ":80:" + edgeAddr,
		"-w", "\n%{http_code} %{redirect_url}"}, extra...)
	out, err := exec.Command("curl", append(args, url)...).CombinedOutput()
	s := string(out)
	i := strings.LastIndex(s, "\n")
	if err != nil || i < 0 {
		return s, "error: " + strings.TrimSpace(s)
	}
	return s[:i], strings.TrimSpace(s[i+1:])
}

// waitCurl retries curl until the status line starts with want.
func waitCurl(t *testing.T, env *edgetest.Env, url, want string, extra ...string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		body, status := curl(t, env, url, extra...)
		if strings.HasPrefix(status, want) {
			return body, time.Since(start)
		}
		if time.Since(start) > 60*time.Second {
			caddyLog, _ := os.ReadFile(env.Dir + "/caddy.log")
			t.Fatalf("%s: status %q, want %q; body %q\ncaddy log tail:\n%s", url, status, want, body, tail(string(caddyLog), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// caddyServer reads fcm's server from Caddy's config.
func caddyServer(t *testing.T) map[string]any {
	t.Helper()
	resp, err := http.Get(edgetest.CaddyAdmin + "/config/apps/http/servers/fcm")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return v
}

func routeIDs(server map[string]any) []string {
	var ids []string
	routes, _ := server["routes"].([]any)
	for _, r := range routes {
		if m, ok := r.(map[string]any); ok {
			id, _ := m["@id"].(string)
			ids = append(ids, id)
		}
	}
	return ids
}

// TestEdge: every VM is at https://<name>.<domain> through a real Caddy with a
// certificate a real ACME CA (Pebble) issued after an HTTP-01 challenge; routes
// follow create, stop, start and destroy, come back after Caddy restarts empty,
// survive a daemon restart unchanged, and the API is reachable through Caddy.
func TestEdge(t *testing.T) {
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)

	// Caddy refusing the config (its :443 is taken): the daemon says so, with
	// the routes and Caddy's reason, and applies it once the port is free.
	squatter, err := net.Listen("tcp", ":443")
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemonHV(t, "qemu", dataDir, edgeFlags(env)...)
	d.waitLog("edge: Caddy refused the routes")
	if log := d.log(); !strings.Contains(log, "added=[fcm-daemon]") || !strings.Contains(log, "address already in use") {
		t.Errorf("daemon log on a refusal lacks the route or Caddy's reason:\n%s", log)
	}
	squatter.Close()
	d.waitLog("edge: Caddy updated again")
	work := t.TempDir()

	out := d.mustCLI(work, "create", "--name", "web1")
	if !strings.Contains(out, "URL: https://web1.e2e.test (route applied") {
		t.Errorf("create output:\n%s", out)
	}
	body, took := waitCurl(t, env, "https://web1.e2e.test/", "200")
	if !strings.Contains(body, "fcm placeholder") {
		t.Errorf("https://web1.e2e.test/ served %q, want the guest's placeholder page", body)
	}
	t.Logf("first HTTPS answer %s after create returned", took.Round(time.Millisecond))
	// The certificate is Pebble's, for that name.
	resp, err := env.Client().Get("https://web1.e2e.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	leaf := resp.TLS.PeerCertificates[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "web1.e2e.test" || !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("certificate for %v issued by %q, want web1.e2e.test from Pebble", leaf.DNSNames, leaf.Issuer.CommonName)
	}
	if _, status := curl(t, env, "http://web1.e2e.test/x?y=1"); status != "308 https://web1.e2e.test/x?y=1" {
		t.Errorf("plain HTTP: %q, want a 308 redirect to HTTPS", status)
	}

	// A second VM, and one with no public URL.
	d.mustCLI(work, "create", "--name", "web2")
	waitCurl(t, env, "https://web2.e2e.test/", "200")
	out = d.mustCLI(work, "create", "--name", "priv1", "--no-expose")
	if !strings.Contains(out, "URL: none (--no-expose)") {
		t.Errorf("create --no-expose:\n%s", out)
	}
	ids := strings.Join(routeIDs(caddyServer(t)), ",")
	if ids != "fcm-daemon,fcm-vm-web1,fcm-vm-web2" {
		t.Errorf("routes in Caddy: %s", ids)
	}

	// The API through https://fcm.<domain>: with a token, and without.
	for _, tc := range []struct{ auth, want string }{{"Bearer " + d.token(), "200"}, {"", "401"}, {"Bearer fcm_nope", "401"}} {
		extra := []string{}
		if tc.auth != "" {
			extra = append(extra, "-H", "Authorization: "+tc.auth)
		}
		body, status := curl(t, env, "https://fcm.e2e.test/v1/vms", extra...)
		if !strings.HasPrefix(status, tc.want) {
			t.Errorf("API through Caddy with %q: %s %s", tc.auth, status, body)
		}
		if tc.want == "200" && !strings.Contains(body, `"url":"https://web1.e2e.test","route":"applied"`) {
			t.Errorf("API through Caddy: %s", body)
		}
		if tc.want == "401" && !strings.Contains(body, `"code":"unauthorized"`) {
			t.Errorf("API through Caddy without a token: %s", body)
		}
	}

	// The CLI from afar: FCM_HOST=https://fcm.<domain>, a streamed create,
	// and a console WebSocket, all through Caddy.
	remote := remoteCLI(t, env, d.token())
	out, err = remote("create", "--name", "web4")
	t.Logf("remote create:\n%s", out)
	if err != nil || !strings.Contains(out, "] ssh ") || !strings.Contains(out, "URL: https://web4.e2e.test (route applied") {
		caddyLog, _ := os.ReadFile(env.Dir + "/caddy.log")
		t.Errorf("remote create: %v\n%s\ncaddy log:\n%s", err, out, tail(string(caddyLog), 6000))
	}
	if out, err := remote("ls"); err != nil || !strings.Contains(out, "web4") {
		t.Errorf("remote ls: %v\n%s", err, out)
	}
	if _, err := remote("console", "ls", "web4"); err != nil {
		t.Errorf("remote console ls: %v", err)
	}
	consoleThroughCaddy(t, env, d.token(), "web4")
	if out, err := remote("destroy", "web4"); err != nil {
		t.Errorf("remote destroy: %v\n%s", err, out)
	}

	// Destroy: that route goes, the others stay.
	d.mustCLI(work, "destroy", "web2")
	if _, status := curl(t, env, "https://web2.e2e.test/"); strings.HasPrefix(status, "200") {
		t.Errorf("web2 still served after destroy: %s", status)
	}
	waitCurl(t, env, "https://web1.e2e.test/", "200")

	// A stopped VM answers 503 saying so; started again, it is served again.
	d.mustCLI(work, "stop", "web1")
	body, _ = waitCurl(t, env, "https://web1.e2e.test/", "503")
	if !strings.Contains(body, "web1 is stopped") {
		t.Errorf("stopped VM page: %q", body)
	}
	d.mustCLI(work, "start", "web1")
	waitCurl(t, env, "https://web1.e2e.test/", "200")

	// Caddy down: create still works, the route is pending; Caddy back with an
	// empty config: every route is applied again within seconds.
	env.StopCaddy()
	d.waitLog("edge: Caddy not updated; retrying")
	out = d.mustCLI(work, "create", "--name", "web3")
	if !strings.Contains(out, "URL: https://web3.e2e.test (route pending") {
		t.Errorf("create with Caddy down:\n%s", out)
	}
	d.waitCLI(work, `web1\s.*https://web1.e2e.test \(route pending\)`, "ls")
	if err := env.StartCaddy(); err != nil {
		t.Fatal(err)
	}
	_, took = waitCurl(t, env, "https://web1.e2e.test/", "200")
	t.Logf("routes back %s after Caddy restarted empty", took.Round(time.Millisecond))
	waitCurl(t, env, "https://web3.e2e.test/", "200")
	d.waitCLI(work, `web3\s.*https://web3.e2e.test\s`, "ls")

	// A daemon restart changes nothing in Caddy, and adds no duplicate.
	before := caddyServer(t)
	d.stop(syscall.SIGTERM)
	d = startDaemonHV(t, "qemu", dataDir, edgeFlags(env)...)
	time.Sleep(3 * time.Second) // a pass or two
	after := caddyServer(t)
	b1, _ := json.Marshal(before)
	b2, _ := json.Marshal(after)
	if string(b1) != string(b2) {
		t.Errorf("Caddy's config changed across a daemon restart:\n%s\n%s", b1, b2)
	}
	if ids := strings.Join(routeIDs(after), ","); ids != "fcm-daemon,fcm-vm-web1,fcm-vm-web3" {
		t.Errorf("routes after a daemon restart: %s", ids)
	}

	for _, name := range []string{"web1", "web3", "priv1"} {
		d.mustCLI(work, "destroy", name)
	}
	if ids := strings.Join(routeIDs(caddyServer(t)), ","); ids != "fcm-daemon" {
		t.Errorf("routes after destroying every VM: %s", ids)
	}
	wantEventsOnce(t, d.auditEvents(t), "create by admin on web4: ok", "destroy by admin on web2: ok",
		"stop by admin on web1: ok", "start by admin on web1: ok", "destroy by admin on web1: ok")
}

// TestEdge_BadInput: a bad domain, TLS mode or port is refused in one line.
func TestEdge_BadInput(t *testing.T) {
	bin := os.Getenv("FCM_BIN")
	dataDir := shortTempDir(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--domain", "bad_domain.test"}, `invalid domain "bad_domain.test"`},
		{[]string{"--domain", "localhost"}, `invalid domain "localhost"`},
		{[]string{"--domain", "ok.test", "--tls", "magic"}, `--tls "magic"`},
		{[]string{"--domain", "ok.test", "--caddy-admin", "127.0.0.1:2019"}, "invalid Caddy admin address"},
		{[]string{"--domain", "ok.test", "--acme-ca", "http://ca.test/dir"}, "want an https:// URL"},
		{[]string{"--domain", "ok.test", "--acme-ca-root", "/nonexistent.pem"}, "/nonexistent.pem"},
	} {
		args := append([]string{"daemon", "--data-dir", dataDir, "--listen", daemonListen}, tc.args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
			t.Errorf("fcm daemon %v: %v, %q; want one line with %q", tc.args, err, out, tc.want)
		}
	}
	if entries, _ := os.ReadDir(dataDir); len(entries) != 0 {
		t.Errorf("a refused daemon left files in its data dir: %v", entries)
	}

	d := startDaemon(t, dataDir)
	work := t.TempDir()
	for _, port := range []string{"70000", "-1"} {
		out, code := d.cli(work, "create", "--port", port)
		if code == 0 || !strings.Contains(out, "port "+port+" out of range 1-65535") {
			t.Errorf("create --port %s: exit %d, %q", port, code, out)
		}
	}
}

// remoteCLI runs the fcm CLI as a remote user would: FCM_HOST is
// https://fcm.<domain>, found through /etc/hosts (bind-mounted in a mount
// namespace of its own) and trusted through Pebble's root.
func remoteCLI(t *testing.T, env *edgetest.Env, token string) func(args ...string) (string, error) {
	hosts := filepath.Join(t.TempDir(), "hosts")
	lines := "127.0.0.1 localhost\n"
	for _, h := range []string{"fcm", "web1", "web2", "web3", "web4"} {
		lines += edgeAddr + " " + h + "." + edgeDomain + "\n"
	}
	if err := os.WriteFile(hosts, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	return func(args ...string) (string, error) {
		cmd := exec.Command("unshare", append([]string{"-m", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`,
			hosts, os.Getenv("FCM_BIN")}, args...)...)
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "FCM_HOST=https://fcm."+edgeDomain, "FCM_TOKEN="+token, "SSL_CERT_FILE="+env.RootFile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// consoleThroughCaddy attaches to a new session over wss://fcm.<domain> and
// runs a command.
func consoleThroughCaddy(t *testing.T, env *edgetest.Env, token, vm string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &client.Client{Host: "https://fcm." + edgeDomain, Token: token, HTTP: env.Client()}
	s, err := c.CreateSession(ctx, vm, "")
	if err != nil {
		t.Fatalf("session through Caddy: %v", err)
	}
	ws, _, err := websocket.Dial(ctx, "wss://fcm."+edgeDomain+"/v1/vms/"+vm+"/sessions/"+s.ID+"/attach?cols=80&rows=24",
		&websocket.DialOptions{HTTPClient: env.Client(), HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("console WebSocket through Caddy: %v", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	readUntil(ctx, t, ws, "root@"+vm)
	ws.Write(ctx, websocket.MessageBinary, []byte("echo via-caddy-$((6*7))\r"))
	readUntil(ctx, t, ws, "via-caddy-42")
}

// TestEdge_UnixAdminSocket: with Caddy's admin API on a unix socket (0600, as
// the quick start sets it up) and nothing on TCP 2019, the daemon applies its
// route through the socket, again after Caddy restarts; the API through
// Caddy works, /health there tells no version, and the daemon's log names the
// client Caddy forwarded for and the token's id.
func TestEdge_UnixAdminSocket(t *testing.T) {
	sockDir := shortTempDir(t)
	env, err := edgetest.StartSocket(t.TempDir(), edgeAddr, filepath.Join(sockDir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	if c, err := net.DialTimeout("tcp", "127.0.0.1:2019", time.Second); err == nil {
		c.Close()
		t.Fatal("something answers on 127.0.0.1:2019: the test wants Caddy only on its socket")
	}
	if fi, err := os.Stat(env.AdminSocket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v %v, want mode 0600", fi.Mode(), err)
	}
	dataDir := shortTempDir(t)
	d := startDaemonHV(t, "qemu", dataDir, edgeFlags(env)...)
	if !strings.Contains(d.log(), "admin API unix/"+env.AdminSocket) {
		t.Errorf("the daemon does not say it uses the socket:\n%s", d.log())
	}
	waitRoutes := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := env.AdminClient().Get(env.AdminURL() + "/config/apps/http/servers/fcm")
			if err == nil {
				var v map[string]any
				json.NewDecoder(resp.Body).Decode(&v)
				resp.Body.Close()
				if strings.Join(routeIDs(v), ",") == "fcm-daemon" {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("fcm's route never reached Caddy through its socket (%v):\n%s", err, d.log())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitRoutes()

	body, _ := waitCurl(t, env, "https://fcm."+edgeDomain+"/health", "200")
	if strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Errorf("/health through Caddy: %s, want only the status", body)
	}
	body, status := curl(t, env, "https://fcm."+edgeDomain+"/health", "-H", "Authorization: Bearer "+d.token())
	if !strings.HasPrefix(status, "200") || !strings.Contains(body, `"version"`) {
		t.Errorf("/health through Caddy with the token: %s %s", status, body)
	}
	if body, status := curl(t, env, "https://fcm."+edgeDomain+"/v1/vms", "-H", "Authorization: Bearer "+d.token()); !strings.HasPrefix(status, "200") {
		t.Errorf("API through Caddy: %s %s", status, body)
	}
	d.waitLog("path=/v1/vms status=200")
	var line string
	for _, l := range strings.Split(d.log(), "\n") {
		if strings.Contains(l, "path=/v1/vms status=200") {
			line = l
		}
	}
	for _, want := range []string{"remote=127.0.0.1:", "forwarded_for=" + edgeAddr, "token=admin", "token_fp="} {
		if !strings.Contains(line, want) {
			t.Errorf("request log line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(d.log(), d.token()[4:]) {
		t.Error("the token is in the daemon's log")
	}

	// Caddy restarted (empty but for its admin socket): the route is back.
	env.StopCaddy()
	if err := env.StartCaddy(); err != nil {
		t.Fatal(err)
	}
	waitRoutes()
	waitCurl(t, env, "https://fcm."+edgeDomain+"/health", "200")
}
