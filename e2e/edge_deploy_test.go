package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/edge/edgetest"
)

// personShell runs a bash script as a person on another machine would: fcm and
// git reach the daemon at https://fcm.<domain> (found through /etc/hosts,
// bind-mounted in a mount namespace of its own), trusting Pebble's root.
func personShell(t *testing.T, env *edgetest.Env, token, dir, script string) (string, error) {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(os.Getenv("FCM_BIN"), filepath.Join(bin, "fcm")); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(bin, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"+edgeAddr+" fcm."+edgeDomain+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-m", "sh", "-c", `mount --bind "$0" /etc/hosts && exec bash -euo pipefail -c "$1"`, hosts, script)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), gitEnv...), "PATH="+bin+":"+os.Getenv("PATH"), "HOME="+dir,
		"FCM_HOST=https://fcm."+edgeDomain, "FCM_TOKEN="+token, "SSL_CERT_FILE="+env.RootFile, "GIT_SSL_CAINFO="+env.RootFile)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestEdge_Deploy is the design's quick start verbatim, from another machine,
// through Caddy: create, git init, Procfile, index.html, commit, git push fcm
// main; the page at https://<name>.<domain> with a certificate from Pebble.
// Then a push whose release takes a while survives another VM being created
// and destroyed meanwhile (each changes Caddy's config).
func TestEdge_Deploy(t *testing.T) {
	env, err := edgetest.Start(t.TempDir(), edgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	bob := []string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + seedUser(t, dataDir, "u_0b0b0b0b0b0b", "bob@example.com")}
	d := startDaemonHV(t, "qemu", dataDir, append(edgeFlags(env), "--resolver", edgetest.DNS, "--allow", "@example.com")...)
	waitCurl(t, env, "https://fcm."+edgeDomain+"/health", "200") // its certificate issued
	work := t.TempDir()
	out, err := personShell(t, env, d.token(), work, `
fcm create
git init
echo "web: python3 -m http.server 3000" > Procfile
echo "<h1>Hello World</h1>" > index.html
git add . && git commit -m "init"
git push fcm main
`)
	t.Logf("quick start:\n%s", out)
	if err != nil {
		t.Fatalf("quick start: %v\ndaemon log:\n%s", err, tail(d.log(), 3000))
	}
	name, _ := os.ReadFile(filepath.Join(work, ".fcm"))
	vm := strings.TrimSpace(string(name))
	url := "https://" + vm + "." + edgeDomain
	for _, want := range []string{"Git remote fcm: https://fcm." + edgeDomain + "/git/" + vm + ".git",
		"remote: -----> Deploy successful! v1 is live", "remote:        " + url, "* [new branch]      main -> main"} {
		if !strings.Contains(out, want) {
			t.Errorf("quick start output lacks %q", want)
		}
	}
	if body, _ := waitCurl(t, env, url+"/", "200"); !strings.Contains(body, "<h1>Hello World</h1>") {
		t.Errorf("%s served %q", url, body)
	}

	// A push through Caddy while Caddy's config changes under it.
	pushed := make(chan string, 1)
	go func() {
		out, err := personShell(t, env, d.token(), work, `
echo "web: python3 -m http.server 3000" > Procfile
echo "release: echo release started; sleep 25; echo release done" >> Procfile
echo "<h1>Hello again</h1>" > index.html
git commit -qam "slow release" && git push fcm main
`)
		if err != nil {
			out += "\nerror: " + err.Error()
		}
		pushed <- out
	}()
	d.mustCLI(t.TempDir(), "create", "--name", "churn", "--no-git")
	d.mustCLI(t.TempDir(), "destroy", "churn")
	out = <-pushed
	t.Logf("push during reloads:\n%s", out)
	for _, want := range []string{"release started", "... still working (", "release done", "Deploy successful! v2 is live"} {
		if !strings.Contains(out, want) {
			t.Errorf("push through Caddy during a create and a destroy lacks %q", want)
		}
	}
	if log := d.log(); !strings.Contains(log, "added=[fcm-vm-churn]") || !strings.Contains(log, "removed=[fcm-vm-churn]") {
		t.Errorf("Caddy's config did not change during the push:\n%s", tail(log, 3000))
	}
	if body, _ := curl(t, env, url+"/"); !strings.Contains(body, "Hello again") {
		t.Errorf("%s served %q after the second push", url, body)
	}

	t.Run("custom domain", func(t *testing.T) { customDomain(t, env, d, work, vm, bob) })

	t.Run("an app's cookies for the parent domain do not reach the control plane", func(t *testing.T) {
		// The app at https://<vm>.<domain> plants, for all of <domain>, a valid
		// session token (the admin's, in the unprefixed name a plain-HTTP
		// daemon reads), a __Host- session and a login state.
		out, err := personShell(t, env, d.token(), work, `
cat > app.py <<'EOF'
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        d = os.environ["PLANT_DOMAIN"]
        self.send_header("Set-Cookie", "fcm_session=%s; Domain=%s; Path=/; Secure" % (os.environ["PLANT_TOKEN"], d))
        self.send_header("Set-Cookie", "__Host-fcm_session=%s; Domain=%s; Path=/; Secure" % (os.environ["PLANT_TOKEN"], d))
        self.send_header("Set-Cookie", "fcm_login_state=planted; Domain=%s; Path=/; Secure" % d)
        self.end_headers()
        self.wfile.write(b"cookies planted")
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
EOF
echo "web: python3 app.py" > Procfile
fcm config set PLANT_DOMAIN=`+edgeDomain+` PLANT_TOKEN=$FCM_TOKEN
git add . && git commit -qm planter && git push fcm main
`)
		if err != nil {
			t.Fatalf("deploying the planter: %v\n%s", err, out)
		}
		jar := filepath.Join(t.TempDir(), "jar")
		if body, _ := waitCurl(t, env, url+"/", "200", "-c", jar); !strings.Contains(body, "cookies planted") {
			t.Fatalf("%s served %q", url, body)
		}
		// A browser's jar: curl's keeps Domain cookies, and refuses a
		// __Host- one that names a Domain, as browsers do.
		if data, _ := os.ReadFile(jar); !strings.Contains(string(data), "fcm_session") {
			t.Fatalf("the jar holds no planted cookie:\n%s", data)
		}
		api := "https://fcm." + edgeDomain
		if body, status := curl(t, env, api+"/v1/whoami", "-b", jar); !strings.HasPrefix(status, "401") {
			t.Errorf("whoami with the planted cookies: %s %s", status, body)
		}
		if body, status := curl(t, env, api+"/", "-b", jar); !strings.HasPrefix(status, "200") || strings.Contains(body, `class="vms"`) || !strings.Contains(body, `id="signed-out"`) {
			t.Errorf("the status page with the planted cookies is signed in: %s\n%s", status, body)
		}
	})

	d.mustCLI(work, "destroy", vm)

	// The domain went with the VM: no longer served, and free for bob.
	if _, status := curl(t, env, "https://app.example.test/"); strings.HasPrefix(status, "200") {
		t.Errorf("https://app.example.test/ still served after its VM was destroyed: %s", status)
	}
	if out, code := runFCM(t, t.TempDir(), bob, "domains", "add", "bobs", "app.example.test"); code != 0 || !strings.Contains(out, "bobs is served at https://app.example.test") {
		t.Errorf("bob adds the domain of a destroyed VM: exit %d\n%s", code, out)
	}
}

// customDomain: the app of VM vm at https://app.example.test through Caddy,
// with a certificate Pebble issued for that name; a name whose DNS points
// elsewhere is added with the record to create; bob (whose env it is)
// cannot take the name; a Caddy restart brings it back.
func customDomain(t *testing.T, env *edgetest.Env, d *daemonProc, work, vm string, bob []string) {
	if err := env.SetA("elsewhere.example.test", "203.0.113.7"); err != nil {
		t.Fatal(err)
	}
	out := d.mustCLI(work, "domains", "add", "elsewhere.example.test")
	if want := "DNS: elsewhere.example.test does not point at this host yet (it resolves to 203.0.113.7): add an A record for " + edgeAddr + " (or a CNAME to " + vm + "." + edgeDomain + ")"; !strings.Contains(out, want) {
		t.Errorf("domains add of a name pointing elsewhere:\n%s\nwant %q", out, want)
	}
	d.mustCLI(work, "domains", "rm", "elsewhere.example.test")

	out = d.mustCLI(work, "domains", "add", "app.example.test")
	for _, want := range []string{vm + " is served at https://app.example.test (route applied)", "DNS: app.example.test points at this host (" + edgeAddr + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("domains add:\n%s\nwant %q", out, want)
		}
	}
	if body, _ := waitCurl(t, env, "https://app.example.test/", "200"); !strings.Contains(body, "Hello again") {
		t.Errorf("https://app.example.test/ served %q, want the app", body)
	}
	resp, err := env.Client().Get("https://app.example.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if leaf := resp.TLS.PeerCertificates[0]; len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "app.example.test" || !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("certificate for %v issued by %q, want app.example.test from Pebble", leaf.DNSNames, leaf.Issuer.CommonName)
	}
	if out := d.mustCLI(work, "domains"); !strings.Contains(out, "https://app.example.test") || !strings.Contains(out, "applied") {
		t.Errorf("domains:\n%s", out)
	}

	// Bob, with a VM of his own, cannot take it, and learns nothing of whose it is.
	runFCM(t, t.TempDir(), bob, "create", "--name", "bobs", "--no-git")
	out, code := runFCM(t, t.TempDir(), bob, "domains", "add", "bobs", "app.example.test")
	if code == 0 || strings.TrimSpace(out) != "fcm: app.example.test is taken: another VM on this host serves it" {
		t.Errorf("bob adds alice's domain: exit %d\n%s", code, out)
	}

	env.StopCaddy()
	if err := env.StartCaddy(); err != nil {
		t.Fatal(err)
	}
	if body, _ := waitCurl(t, env, "https://app.example.test/", "200"); !strings.Contains(body, "Hello again") {
		t.Errorf("after a Caddy restart https://app.example.test/ served %q", body)
	}
	wantEventsOnce(t, d.auditEvents(t), "domain add by admin on "+vm+" (elsewhere.example.test): ok",
		"domain rm by admin on "+vm+" (elsewhere.example.test): ok", "domain add by admin on "+vm+" (app.example.test): ok",
		"create by bob@example.com on bobs: ok", "domain add by bob@example.com on bobs (app.example.test): HTTP 409")
}
