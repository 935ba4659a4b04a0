package e2e

import (
	"archive/zip"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/images"
	"golang.org/x/sys/unix"
)

// Packages the runtime tests install, served by the test itself inside its
// namespace: an npm package fetched with `npm pack` and a lockfile made by a
// real bun, both before the tests enter the namespace (they need the
// registry); a wheel and a gem the test builds.
var fixturesDir = envOr("FCM_E2E_FIXTURES", "/var/cache/fcm/e2e-fixtures-v1")

const msVersion = "2.1.3"

// prepareFixtures fetches what needs the internet once, into fixturesDir.
func prepareFixtures() error {
	if _, err := os.Stat(filepath.Join(fixturesDir, ".complete")); err == nil {
		return nil
	}
	tmp := fixturesDir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Join(tmp, "bunapp"), 0o755); err != nil {
		return err
	}
	run := func(dir string, name string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run(tmp, "npm", "pack", "--silent", "ms@"+msVersion); err != nil {
		return err
	}
	bunVersion := ""
	for _, p := range images.Variants["full"].NPM {
		if v, ok := strings.CutPrefix(p, "bun@"); ok {
			bunVersion = v
		}
	}
	if err := run(tmp, "npm", "pack", "--silent", "@oven/bun-linux-x64@"+bunVersion); err != nil {
		return err
	}
	if err := run(tmp, "tar", "xzf", "oven-bun-linux-x64-"+bunVersion+".tgz", "package/bin/bun"); err != nil {
		return err
	}
	// The bun app's lockfile, made by bun itself against the real registry.
	app := filepath.Join(tmp, "bunapp")
	os.WriteFile(filepath.Join(app, "package.json"), []byte(`{"name":"bunapp","private":true,"dependencies":{"ms":"`+msVersion+`"}}`+"\n"), 0o644)
	if err := run(app, filepath.Join(tmp, "package/bin/bun"), "install", "--no-progress"); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(app, "node_modules"))
	os.RemoveAll(filepath.Join(tmp, "package"))
	os.Remove(filepath.Join(tmp, "oven-bun-linux-x64-"+bunVersion+".tgz"))
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(fixturesDir)
	return os.Rename(tmp, fixturesDir)
}

// wheel builds a pure-Python wheel of module name whose greet() returns text.
func wheel(name, version, text string) ([]byte, string, error) {
	files := []struct{ path, body string }{
		{name + "/__init__.py", fmt.Sprintf("def greet():\n    return %q\n", text)},
		{name + "-" + version + ".dist-info/METADATA", "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"},
		{name + "-" + version + ".dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: fcm-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := zw.Create(f.path)
		if err != nil {
			return nil, "", err
		}
		w.Write([]byte(f.body))
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.path, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	recPath := name + "-" + version + ".dist-info/RECORD"
	record.WriteString(recPath + ",,\n")
	w, err := zw.Create(recPath)
	if err != nil {
		return nil, "", err
	}
	w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), name + "-" + version + "-py3-none-any.whl", nil
}

// gem builds a gem with the host's Ruby: module FcmGreet, FcmGreet.hello = text.
func gem(t *testing.T, dir, text string) string {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
	writeFiles(t, dir, map[string]string{
		"lib/fcmgreet.rb": fmt.Sprintf("module FcmGreet\n  def self.hello\n    %q\n  end\nend\n", text),
		"fcmgreet.gemspec": `Gem::Specification.new do |s|
  s.name = "fcmgreet"
  s.version = "1.0.0"
  s.summary = "fcm e2e gem"
  s.authors = ["fcm"]
  s.files = ["lib/fcmgreet.rb"]
  s.license = "MIT"
end
`,
	})
	sh(t, "sh", "-c", "cd "+dir+" && gem build -q fcmgreet.gemspec")
	return filepath.Join(dir, "fcmgreet-1.0.0.gem")
}

// internet is a network namespace standing in for the internet: the test's
// namespace (the host) reaches it by its default route over a veth,
// 10.254.0.1/30 on the host, 10.254.0.2/30 in it, and it answers on
// 198.51.100.1 (TEST-NET-2: a public address guests may reach) and on
// 169.254.169.254 (where clouds serve their metadata, which guests must not
// reach). Start it before the daemon, which picks at start the interfaces
// guest traffic leaves by. It has no route to the VM subnet: guests reach it
// only masqueraded.
type internet struct{ ns string }

func startInternet(t *testing.T) *internet {
	t.Helper()
	n := &internet{ns: fmt.Sprintf("fcm-inet-%d", os.Getpid())}
	sh(t, "ip", "netns", "add", n.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", n.ns).Run() })
	sh(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
	sh(t, "ip", "link", "add", "vinet0", "type", "veth", "peer", "name", "eth0", "netns", n.ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "vinet0").Run() })
	sh(t, "ip", "addr", "add", "10.254.0.1/30", "dev", "vinet0")
	sh(t, "ip", "link", "set", "vinet0", "up")
	sh(t, "ip", "route", "add", "default", "via", "10.254.0.2")
	sh(t, "ip", "-n", n.ns, "addr", "add", "10.254.0.2/30", "dev", "eth0")
	sh(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", n.ns, "addr", "add", "198.51.100.1/32", "dev", "lo")
	sh(t, "ip", "-n", n.ns, "addr", "add", "169.254.169.254/32", "dev", "lo")
	return n
}

// listen opens a TCP listener on addr inside the namespace: the socket is
// made from a thread switched into it for the moment, and stays there.
func (n *internet) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + n.ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter namespace %s: %v", n.ns, err)
	}
	ln, lerr := net.Listen("tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(fmt.Sprintf("cannot return to the test's namespace: %v", err)) // the thread stays locked and dies
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// pkgServer serves, on ln: a PyPI simple index (/simple/), an npm registry
// (/npm/), and a gem source with bundler's compact index (/gems/).
type pkgServer struct {
	URL string
	srv *http.Server
}

func startPkgServer(t *testing.T, ln net.Listener) *pkgServer {
	t.Helper()
	mux := http.NewServeMux()
	// Python: one wheel.
	whl, whlName, err := wheel("fcmgreet", "1.0", "greetings from a wheel")
	if err != nil {
		t.Fatal(err)
	}
	whlSum := sha256.Sum256(whl)
	mux.HandleFunc("/simple/fcmgreet/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "<html><body><a href=\"/files/%s#sha256=%s\">%s</a></body></html>\n", whlName, hex.EncodeToString(whlSum[:]), whlName)
	})
	mux.HandleFunc("/files/"+whlName, func(w http.ResponseWriter, r *http.Request) { w.Write(whl) })
	// npm: ms, from `npm pack`.
	tgz, err := os.ReadFile(filepath.Join(fixturesDir, "ms-"+msVersion+".tgz"))
	if err != nil {
		t.Fatalf("fixtures (made by TestMain before the namespace): %v", err)
	}
	tgzSHA := sha256.Sum256(tgz)
	base := "http://" + ln.Addr().String()
	tarball := base + "/npm/ms/-/ms-" + msVersion + ".tgz"
	mux.HandleFunc("/npm/ms", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"name": "ms", "dist-tags": map[string]string{"latest": msVersion},
			"versions": map[string]any{msVersion: map[string]any{"name": "ms", "version": msVersion,
				"dist": map[string]any{"tarball": tarball, "integrity": "sha256-" + base64.StdEncoding.EncodeToString(tgzSHA[:])}}},
		})
	})
	mux.HandleFunc("/npm/ms/-/ms-"+msVersion+".tgz", func(w http.ResponseWriter, r *http.Request) { w.Write(tgz) })
	// Ruby: one gem, bundler's compact index.
	gemFile := gem(t, t.TempDir(), "greetings from a gem")
	gemData, err := os.ReadFile(gemFile)
	if err != nil {
		t.Fatal(err)
	}
	gemSum := sha256.Sum256(gemData)
	info := "---\n1.0.0 |checksum:" + hex.EncodeToString(gemSum[:]) + "\n"
	infoSum := md5hex(info)
	mux.HandleFunc("/gems/versions", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "created_at: 2026-01-01T00:00:00Z\n---\nfcmgreet 1.0.0 %s\n", infoSum)
	})
	mux.HandleFunc("/gems/info/fcmgreet", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(info)) })
	mux.HandleFunc("/gems/gems/fcmgreet-1.0.0.gem", func(w http.ResponseWriter, r *http.Request) { w.Write(gemData) })
	p := &pkgServer{URL: base, srv: &http.Server{Handler: logRequests(t, mux)}}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func logRequests(t *testing.T, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Logf("package server: %s %s", r.Method, r.URL.Path)
		h.ServeHTTP(w, r)
	})
}
