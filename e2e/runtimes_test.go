package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDeploy_Runtimes pushes one app per runtime into one VM booted from the
// full image, each with a real dependency from the test's own package server,
// and reads through the app's URL what only that dependency could produce.
func TestDeploy_Runtimes(t *testing.T) {
	// The one daemon test that runs beside others: the serial ones are over
	// by then, and the parallel others boot VMs of their own with no daemon.
	t.Parallel()
	inet := startInternet(t) // before the daemon, which picks its uplinks at start
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonImage(t, "qemu", dataDir, fullImageDir)
	work := t.TempDir()
	d.mustGit(work, "init", "-q", "-b", "main")
	d.mustCLI(work, "create", "--name", "rt")
	vm := d.vms(work)["rt"]
	url := fmt.Sprintf("http://%s:3000/", vm.IP)
	// The packages come from "the internet": guests may not reach the host's
	// own ports beyond Caddy's.
	pkg := startPkgServer(t, inet.listen(t, "198.51.100.1:0"))
	// Mirrors, as a person behind a proxy or with a private index sets them.
	d.mustCLI(work, "config", "set", "PIP_INDEX_URL="+pkg.URL+"/simple/", "PIP_TRUSTED_HOST=198.51.100.1", "NPM_CONFIG_REGISTRY="+pkg.URL+"/npm/",
		"BUNDLE_MIRROR__HTTPS://RUBYGEMS__ORG/="+pkg.URL+"/gems")

	// deploy replaces the work tree with files, commits and pushes it.
	deploy := func(t *testing.T, files map[string]string, wants ...string) string {
		t.Helper()
		entries, _ := os.ReadDir(work)
		for _, e := range entries {
			if e.Name() != ".git" && e.Name() != ".fcm" {
				os.RemoveAll(filepath.Join(work, e.Name()))
			}
		}
		writeFiles(t, work, files)
		for _, args := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", t.Name()}} {
			if out, code := d.git(work, args...); code != 0 {
				t.Fatalf("git %v: %s", args, out)
			}
		}
		start := time.Now()
		out, code := d.git(work, "push", "-f", "fcm", "main")
		t.Logf("push took %s:\n%s", time.Since(start).Round(100*time.Millisecond), out)
		if code != 0 {
			t.Fatalf("push failed (exit %d)", code)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("push output lacks %q", w)
			}
		}
		return out
	}
	expect := func(t *testing.T, want string) {
		t.Helper()
		code, body, err := httpBody(url)
		if err != nil || code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d %q %v, want %q", url, code, body, err, want)
		}
	}

	t.Run("python", func(t *testing.T) {
		deploy(t, map[string]string{
			"requirements.txt": "fcmgreet==1.0\n",
			".python-version":  "3.13\n",
			"Procfile":         "web: python app.py\n",
			"app.py": `import http.server, os, sys, fcmgreet
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s on Python %d.%d" % (fcmgreet.greet(), sys.version_info[0], sys.version_info[1])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
`}, "Detected Python (requirements.txt)", "Using Python 3.13", "(from .python-version)", "Successfully installed fcmgreet-1.0", "Deploy successful!")
		expect(t, "greetings from a wheel on Python 3.13")
	})

	nodeApp := map[string]string{
		"package.json": `{"name": "nodeapp", "private": true, "scripts": {"start": "node server.js"}, "dependencies": {"ms": "` + msVersion + `"}}` + "\n",
		"server.js": `const ms = require("ms");
require("http").createServer((req, res) => res.end("two days are " + ms("2 days") + " ms on node " + process.version)).listen(process.env.PORT);
`}
	t.Run("node", func(t *testing.T) {
		deploy(t, nodeApp, "Detected Node.js (package.json)", "Installing dependencies with npm install", "Default types for this app -> web (npm start)", "Deploy successful!")
		expect(t, "two days are 172800000 ms on node v24")
	})
	t.Run("node again: dependencies from the cache", func(t *testing.T) {
		nodeApp["server.js"] = strings.Replace(nodeApp["server.js"], "two days are", "still two days:", 1)
		deploy(t, nodeApp, "Using cached node_modules (package.json and lockfile unchanged)", "Deploy successful!")
		expect(t, "still two days: 172800000")
	})

	t.Run("bun", func(t *testing.T) {
		lock, err := os.ReadFile(filepath.Join(fixturesDir, "bunapp", "bun.lock"))
		if err != nil {
			t.Fatal(err)
		}
		pkgJSON, _ := os.ReadFile(filepath.Join(fixturesDir, "bunapp", "package.json"))
		deploy(t, map[string]string{
			"package.json": string(pkgJSON),
			"bun.lock":     string(lock),
			"Procfile":     "web: bun run index.ts\n",
			"index.ts": `import ms from "ms";
Bun.serve({ port: Number(process.env.PORT), fetch: () => new Response("an hour is " + ms("1h") + " ms on bun " + Bun.version) });
`}, "Detected Bun (package.json, bun.lock)", "bun install --frozen-lockfile", "Deploy successful!")
		expect(t, "an hour is 3600000 ms on bun")
	})

	t.Run("ruby", func(t *testing.T) {
		deploy(t, map[string]string{
			"Gemfile":  "source \"https://rubygems.org\"\ngem \"fcmgreet\"\n",
			"Procfile": "web: bundle exec ruby app.rb\n",
			"app.rb": `require "socket"
require "fcmgreet"
server = TCPServer.new("0.0.0.0", Integer(ENV.fetch("PORT")))
loop do
  c = server.accept
  while (line = c.gets) && line != "\r\n"; end
  body = "#{FcmGreet.hello} on Ruby #{RUBY_VERSION}"
  c.print "HTTP/1.1 200 OK\r\nContent-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}"
  c.close
end
`}, "Detected Ruby (Gemfile)", "Installing dependencies with bundle install", "Deploy successful!")
		expect(t, "greetings from a gem on Ruby 3.3")
	})

	t.Run("a missing dependency fails the build", func(t *testing.T) {
		writeFiles(t, work, map[string]string{"Gemfile": "source \"https://rubygems.org\"\ngem \"nosuchgem\"\n"})
		d.git(work, "commit", "-qam", "missing dep")
		out, code := d.git(work, "push", "-f", "fcm", "main")
		if code == 0 || !strings.Contains(out, "bundle install failed") || !strings.Contains(out, "keeps serving") {
			t.Errorf("push with a missing gem: exit %d:\n%s", code, out)
		}
		expect(t, "greetings from a gem")
	})
	d.mustCLI(work, "destroy", "rt")
}
