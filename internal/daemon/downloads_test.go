package daemon

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/dist"
)

// downloadsFixture is a daemon serving only the download routes, under
// their rules as Handler does, from a releases directory beside a fcm.db
// that must never be reachable.
type downloadsFixture struct {
	srv *httptest.Server
	dir string // ReleasesDir
}

func newDownloadsFixture(t *testing.T) *downloadsFixture {
	t.Helper()
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "fcm.db"), []byte("SECRET-DATABASE"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(data, "releases")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var sums strings.Builder
	for _, p := range dist.Platforms {
		tgz := fakeTarball(t, "#!/bin/sh\necho \"fcm v9.9.9 "+p.OS+"-"+p.Arch+"\"\n")
		if err := os.WriteFile(filepath.Join(dir, p.Tarball()), tgz, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(tgz)
		fmt.Fprintf(&sums, "%s  %s\n", hex.EncodeToString(sum[:]), p.Tarball())
	}
	if err := os.WriteFile(filepath.Join(dir, dist.SumsFile), []byte(sums.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{ReleasesDir: dir, Version: "v9.9.9"}
	mux := http.NewServeMux()
	for pattern, rt := range s.downloadRoutes() {
		mux.Handle(pattern, s.guard(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no route")
	})
	f := &downloadsFixture{srv: httptest.NewServer(mux), dir: dir}
	t.Cleanup(f.srv.Close)
	return f
}

// fakeTarball is a release tarball whose fcm is the given script.
func fakeTarball(t *testing.T, script string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "fcm", Mode: 0o755, Size: int64(len(script)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(script))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return b.Bytes()
}

// get requests path as written (no cleaning, no redirects followed).
func (f *downloadsFixture) get(t *testing.T, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func apiError(t *testing.T, body []byte) api.Error {
	t.Helper()
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Message == "" {
		t.Fatalf("not a JSON error: %q", body)
	}
	return e
}

func TestDownloads_Tarball(t *testing.T) {
	f := newDownloadsFixture(t)
	for path, file := range map[string]string{
		"/releases/fcm-linux-amd64.tar.gz":   "fcm-linux-amd64.tar.gz",
		"/releases/fcm-macos-arm64.tar.gz":   "fcm-darwin-arm64.tar.gz",
		"/releases/fcm-Darwin-x86_64.tar.gz": "fcm-darwin-amd64.tar.gz",
		"/releases/fcm-linux-aarch64.tar.gz": "fcm-linux-arm64.tar.gz",
	} {
		t.Run(path, func(t *testing.T) {
			resp, body := f.get(t, path)
			want, _ := os.ReadFile(filepath.Join(f.dir, file))
			if resp.StatusCode != 200 || !bytes.Equal(body, want) {
				t.Fatalf("%s: %s, %d bytes; want 200 and the %d bytes of %s", path, resp.Status, len(body), len(want), file)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/gzip" {
				t.Errorf("Content-Type %q, want application/gzip", ct)
			}
			if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(want)) {
				t.Errorf("Content-Length %q, want %d", cl, len(want))
			}
			if cd := resp.Header.Get("Content-Disposition"); !strings.Contains(cd, file) {
				t.Errorf("Content-Disposition %q does not name %s", cd, file)
			}
		})
	}
	resp, body := f.get(t, "/releases/SHA256SUMS")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		!strings.Contains(string(body), "  fcm-darwin-arm64.tar.gz\n") {
		t.Errorf("SHA256SUMS: %s %q: %q", resp.Status, resp.Header.Get("Content-Type"), body)
	}
}

func TestDownloads_BadNames(t *testing.T) {
	f := newDownloadsFixture(t)
	for _, path := range []string{
		"/releases/fcm-windows-amd64.tar.gz", "/releases/fcm-linux-386.tar.gz",
		"/releases/fcm-linux-amd64.zip", "/releases/fcm.db", "/releases/fcm",
	} {
		resp, body := f.get(t, path)
		e := apiError(t, body)
		if resp.StatusCode != 404 || e.Code != api.CodeNotFound || !strings.Contains(e.Message, dist.ValidForms) {
			t.Errorf("%s: %s %+v; want 404 naming the valid forms", path, resp.Status, e)
		}
	}
}

func TestDownloads_Missing(t *testing.T) {
	f := newDownloadsFixture(t)
	os.Remove(filepath.Join(f.dir, "fcm-darwin-arm64.tar.gz"))
	resp, body := f.get(t, "/releases/fcm-macos-arm64.tar.gz")
	e := apiError(t, body)
	if resp.StatusCode != 404 || !strings.Contains(e.Message, "make release RELEASES="+f.dir) ||
		!strings.Contains(e.Message, "no fcm-darwin-arm64.tar.gz in "+f.dir) {
		t.Errorf("%s %+v; want 404 saying the admin must run make release into %s", resp.Status, e, f.dir)
	}

	s := &Server{} // no --releases-dir
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/releases/fcm-linux-amd64.tar.gz", nil)
	r.SetPathValue("file", "fcm-linux-amd64.tar.gz")
	s.serveRelease(w, r, nil)
	if w.Code != 404 || !strings.Contains(w.Body.String(), "--releases-dir") {
		t.Errorf("no releases dir: %d %s", w.Code, w.Body)
	}
}

func TestDownloads_Traversal(t *testing.T) {
	f := newDownloadsFixture(t)
	for _, path := range []string{
		"/releases/../fcm.db", "/releases/..%2Ffcm.db", "/releases/..%2ffcm.db", "/releases/%2e%2e/fcm.db",
		"/releases/%2e%2e%2ffcm.db", "/releases/..%5cfcm.db", "/releases/", "/releases",
		"/releases/fcm-linux-amd64.tar.gz/../../fcm.db", "/releases//fcm.db",
	} {
		t.Run(path, func(t *testing.T) {
			resp, body := f.get(t, path)
			if strings.Contains(string(body), "SECRET") || resp.StatusCode == 200 {
				t.Fatalf("%s: %s %q", path, resp.Status, body)
			}
			// A path the mux cleans is redirected; where it leads is a 404 too.
			if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 {
				resp, body = f.get(t, loc)
			}
			if resp.StatusCode != 404 || strings.Contains(string(body), "SECRET") {
				t.Errorf("%s: %s %q, want 404", path, resp.Status, body)
			}
		})
	}
}

func TestVersionHeader(t *testing.T) {
	w := httptest.NewRecorder()
	(&Server{Version: "v1.3.0"}).versionHeader(w)
	if got := w.Header().Get("Fcm-Version"); got != "v1.3.0" {
		t.Errorf("Fcm-Version %q, want v1.3.0", got)
	}
	w = httptest.NewRecorder()
	(&Server{}).versionHeader(w)
	if _, ok := w.Header()["Fcm-Version"]; ok {
		t.Error("a daemon without a version sent Fcm-Version")
	}
}

func TestPublicURL(t *testing.T) {
	for _, tc := range []struct {
		remote, host, proto, fwdHost string
		tls                          bool
		want                         string
	}{
		{"127.0.0.1:5000", "127.0.0.1:7777", "", "", false, "http://127.0.0.1:7777"},
		{"127.0.0.1:5000", "127.0.0.1:7777", "https", "fcm.example.com", false, "https://fcm.example.com"},
		{"[::1]:5000", "127.0.0.1:7777", "https, http", "fcm.example.com, evil.example", false, "https://fcm.example.com"},
		// From elsewhere the headers are the client's own claim.
		{"203.0.113.9:5000", "fcm.example.com:7777", "https", "evil.example", false, "http://fcm.example.com:7777"},
		{"203.0.113.9:5000", "fcm.example.com", "", "", true, "https://fcm.example.com"},
		{"127.0.0.1:5000", "fcm.example.com", "gopher", "", false, "http://fcm.example.com"},
	} {
		r := httptest.NewRequest("GET", "/install.sh", nil)
		r.RemoteAddr, r.Host = tc.remote, tc.host
		if tc.proto != "" {
			r.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		if tc.fwdHost != "" {
			r.Header.Set("X-Forwarded-Host", tc.fwdHost)
		}
		if tc.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if got := publicURL(r); got != tc.want {
			t.Errorf("%+v: publicURL = %q, want %q", tc, got, tc.want)
		}
	}
}

func TestInstallScript_Served(t *testing.T) {
	f := newDownloadsFixture(t)
	req, _ := http.NewRequest("GET", f.srv.URL+"/install.sh", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", "fcm.example.com")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/x-shellscript" ||
		!strings.Contains(string(body), "url='https://fcm.example.com'") {
		t.Fatalf("%s %q:\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}

	req, _ = http.NewRequest("GET", f.srv.URL+"/install.sh", nil)
	req.Header.Set("X-Forwarded-Host", "x.example.com';reboot;'")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || strings.Contains(string(body), "#!/bin/sh") {
		t.Errorf("a host that is no host name: %s %s", resp.Status, body)
	}
}

// TestInstallScript_Runs runs the served script with sh, as curl | sh
// would, with uname faked to each platform, into a temporary
// FCM_INSTALL_DIR.
func TestInstallScript_Runs(t *testing.T) {
	f := newDownloadsFixture(t)
	resp, script := f.get(t, "/install.sh")
	if resp.StatusCode != 200 {
		t.Fatalf("install.sh: %s %s", resp.Status, script)
	}
	for _, tc := range []struct {
		uname   string // "-s -m"; "": the real uname
		want    string // the platform installed; "": none
		failure string // stderr of a failing install
	}{
		{"", "linux-" + runtime.GOARCH, ""},
		{"Linux x86_64", "linux-amd64", ""},
		{"Linux aarch64", "linux-arm64", ""},
		{"Darwin arm64", "darwin-arm64", ""},
		{"Darwin x86_64", "darwin-amd64", ""},
		{"FreeBSD amd64", "", "there is no fcm client for FreeBSD"},
		{"Linux riscv64", "", "there is no fcm client for riscv64"},
	} {
		name := tc.uname
		if name == "" {
			name = "this host"
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "new", "bin") // made by the script
			stdout, stderr, err := runInstall(t, script, dir, tc.uname)
			if tc.failure != "" {
				if err == nil || !strings.Contains(stderr, tc.failure) {
					t.Fatalf("want a failure saying %q; got %v, stderr %q", tc.failure, err, stderr)
				}
				if _, err := os.Stat(filepath.Join(dir, "fcm")); err == nil {
					t.Error("installed fcm anyway")
				}
				return
			}
			if err != nil {
				t.Fatalf("install: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
			}
			fi, err := os.Stat(filepath.Join(dir, "fcm"))
			if err != nil || fi.Mode().Perm() != 0o755 {
				t.Fatalf("installed fcm: %v %v", fi, err)
			}
			for _, want := range []string{
				"Installed fcm v9.9.9 " + tc.want + " as " + dir + "/fcm",
				"Next: " + dir + "/fcm login --host " + f.srv.URL,
				dir + " is not on your PATH",
			} {
				if !strings.Contains(stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, stdout)
				}
			}
		})
	}

	t.Run("missing tarball", func(t *testing.T) {
		os.Rename(filepath.Join(f.dir, "fcm-darwin-arm64.tar.gz"), filepath.Join(f.dir, "away"))
		defer os.Rename(filepath.Join(f.dir, "away"), filepath.Join(f.dir, "fcm-darwin-arm64.tar.gz"))
		_, stderr, err := runInstall(t, script, t.TempDir(), "Darwin arm64")
		if err == nil || !strings.Contains(stderr, "HTTP 404: no fcm-darwin-arm64.tar.gz in "+f.dir+": the host's admin must run 'make release") {
			t.Errorf("want the daemon's 404 message; got %v, stderr %q", err, stderr)
		}
	})

	t.Run("checksum mismatch", func(t *testing.T) {
		p := filepath.Join(f.dir, "fcm-linux-arm64.tar.gz")
		good, _ := os.ReadFile(p)
		defer os.WriteFile(p, good, 0o644)
		os.WriteFile(p, fakeTarball(t, "#!/bin/sh\necho tampered\n"), 0o644)
		dir := t.TempDir()
		_, stderr, err := runInstall(t, script, dir, "Linux aarch64")
		if err == nil || !strings.Contains(stderr, "fcm-linux-arm64.tar.gz does not match the daemon's SHA256SUMS") {
			t.Errorf("want a checksum failure; got %v, stderr %q", err, stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "fcm")); err == nil {
			t.Error("installed the tampered fcm")
		}
	})

	t.Run("on PATH, replacing", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "fcm"), []byte("old"), 0o755)
		stdout, stderr, err := runInstall(t, script, dir, "Linux x86_64", dir)
		if err != nil {
			t.Fatalf("install: %v\n%s%s", err, stdout, stderr)
		}
		if !strings.Contains(stdout, "Next: fcm login --host "+f.srv.URL) || strings.Contains(stdout, "not on your PATH") {
			t.Errorf("output:\n%s", stdout)
		}
		if out, _ := exec.Command(filepath.Join(dir, "fcm")).Output(); string(out) != "fcm v9.9.9 linux-amd64\n" {
			t.Errorf("installed fcm says %q", out)
		}
	})
}

// runInstall runs script with sh (from stdin, as curl | sh does), uname
// faked to "<-s> <-m>" unless that is "", and PATH starting with onPath.
func runInstall(t *testing.T, script []byte, dir, uname string, onPath ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command("sh")
	cmd.Stdin = bytes.NewReader(script)
	path := strings.Join(append(onPath, os.Getenv("PATH")), ":")
	if uname != "" {
		s, m, _ := strings.Cut(uname, " ")
		bin := t.TempDir()
		fake := fmt.Sprintf("#!/bin/sh\ncase \"$1\" in -s) echo %s ;; -m) echo %s ;; *) exit 1 ;; esac\n", s, m)
		if err := os.WriteFile(filepath.Join(bin, "uname"), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
		path = bin + ":" + path
	}
	cmd.Env = append(os.Environ(), "FCM_INSTALL_DIR="+dir, "PATH="+path)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}
