// Package goinstall proves that `go install github.com/fcmhost/fcm/cmd/fcm@latest`
// alone gives a working fcm: it serves this tree as a module version from a
// proxy on disk (the zip the go command itself would make of a release), installs
// it with a clean module cache into a temporary GOBIN, and runs the installed
// daemon, whose web console serves xterm.js. It needs root, as the daemon does,
// and runs in a network namespace of its own with no route out.
package goinstall

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/netns"
	"github.com/fcmhost/fcm/web"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

const (
	modulePath = "github.com/fcmhost/fcm"
	version    = "v0.1.0"
	listen     = "127.0.0.1:17790"
)

func TestMain(m *testing.M) {
	if netns.Current() == "" {
		code, err := netns.Reexec("fcm-goinstall")
		if err != nil {
			fmt.Fprintf(os.Stderr, "goinstall: %v\n", err)
		}
		os.Exit(code)
	}
	if err := cgroup.EnsureMounted(); err != nil {
		fmt.Fprintf(os.Stderr, "goinstall: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestGoInstall(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Searchable by others: the daemon's git user runs the installed fcm.
	tmp, err := os.MkdirTemp("", "fcm-goinstall-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	proxy := filepath.Join(tmp, "proxy")
	writeProxy(t, root, proxy)

	// A clean module cache (writable, so the test can remove it) and GOBIN;
	// the build cache stays, as it would on a developer's machine. fcm's
	// dependencies come from the host's module cache, which is laid out as a
	// proxy, as verified when they were first downloaded: nothing leaves this
	// namespace, not even for the checksum database.
	modcache, gobin := filepath.Join(tmp, "modcache"), filepath.Join(tmp, "bin")
	deps := filepath.Join(goEnv(t, "GOMODCACHE"), "cache", "download")
	cmd := exec.Command("go", "install", modulePath+"/cmd/fcm@latest")
	cmd.Dir = tmp // outside any module, as `go install pkg@version` is run
	cmd.Env = append(os.Environ(),
		"GOPROXY=file://"+proxy+",file://"+deps,
		"GOSUMDB=off", "GOFLAGS=-modcacherw", "GOTOOLCHAIN=local",
		"GOMODCACHE="+modcache, "GOBIN="+gobin)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install %s/cmd/fcm@latest: %v\n%s", modulePath, err, out)
	}
	t.Logf("go install took %s", time.Since(start).Round(time.Second))
	bin := filepath.Join(gobin, "fcm")
	if out, err := exec.Command("go", "version", "-m", bin).CombinedOutput(); err != nil || !strings.Contains(string(out), "mod\t"+modulePath+"\t"+version) {
		t.Errorf("go version -m %s: %v\n%s\nwant it built from %s %s", bin, err, out, modulePath, version)
	}

	// The installed daemon (on a data dir it makes) serves the console's
	// terminal files, the very ones committed in web/xterm.
	runDaemon(t, bin, filepath.Join(tmp, "data"))
	for _, f := range web.ConsoleTerminalFiles {
		want, err := os.ReadFile(filepath.Join(root, "web", "xterm", f))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + listen + "/static/console/" + f)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
			t.Errorf("GET /static/console/%s from the installed fcm: %d, %d bytes; want 200 and web/xterm/%s (%d bytes)", f, resp.StatusCode, len(got), f, len(want))
		}
	}
}

// writeProxy lays out a GOPROXY directory serving this tree as version of
// the module: what git would hold (tracked files and untracked ones not
// ignored), zipped by the rules the go command applies to every module.
func writeProxy(t *testing.T, root, proxy string) {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var files []modzip.File
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if _, err := os.Lstat(filepath.Join(root, name)); err != nil {
			continue // deleted in the work tree
		}
		files = append(files, dirFile{root: root, name: name})
	}
	dir := filepath.Join(proxy, modulePath, "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	zf, err := os.Create(filepath.Join(dir, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zf.Close()
	if err := modzip.Create(zf, module.Version{Path: modulePath, Version: version}, files); err != nil {
		t.Fatalf("zip the module: %v", err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"list":            []byte(version + "\n"),
		version + ".info": fmt.Appendf(nil, `{"Version":%q,"Time":%q}`, version, time.Now().UTC().Format(time.RFC3339)),
		version + ".mod":  gomod,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dirFile is a file of the tree for modzip.
type dirFile struct{ root, name string }

func (f dirFile) Path() string                 { return f.name }
func (f dirFile) Lstat() (os.FileInfo, error)  { return os.Lstat(filepath.Join(f.root, f.name)) }
func (f dirFile) Open() (io.ReadCloser, error) { return os.Open(filepath.Join(f.root, f.name)) }

func goEnv(t *testing.T, key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", key, err)
	}
	return strings.TrimSpace(string(out))
}

// runDaemon starts the installed `fcm daemon` (no edge, VMs on the minimal
// test image) and waits for /health; it is stopped when the test ends.
func runDaemon(t *testing.T, bin, dataDir string) {
	t.Helper()
	img := os.Getenv("FCM_TEST_IMAGE")
	if img == "" {
		img = "/var/cache/fcm/test-image"
	}
	var log bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "daemon", "--data-dir", dataDir, "--listen", listen,
		"--kernel", filepath.Join(img, image.KernelFile), "--initrd", filepath.Join(img, image.InitrdFile),
		"--rootfs", filepath.Join(img, image.RootfsFile),
		"--caddy-admin", "off", "--suspend", "off", "--store", "dir")
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get("http://" + listen + "/health"); err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the installed fcm daemon exited: %v\n%s", err, log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the installed fcm daemon is not healthy after 60s:\n%s", log.String())
		}
	}
}
