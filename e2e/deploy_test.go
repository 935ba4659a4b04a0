package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// gitEnv is a person's git: an identity, no system or global config.
var gitEnv = []string{"GIT_AUTHOR_NAME=Ada", "GIT_AUTHOR_EMAIL=ada@example.com",
	"GIT_COMMITTER_NAME=Ada", "GIT_COMMITTER_EMAIL=ada@example.com", "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0"}

// git runs git in dir with the daemon's host and token in the environment (what
// the credential helper fcm configured reads), returning output and exit code.
func (d *daemonProc) git(dir string, args ...string) (string, int) {
	d.t.Helper()
	return d.gitWith(dir, []string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + d.token()}, args...)
}

// gitWith runs git in dir as a person would (identity, HOME=dir) with env added.
func (d *daemonProc) gitWith(dir string, env []string, args ...string) (string, int) {
	d.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(append(append(os.Environ(), gitEnv...), "HOME="+dir), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return string(out), code
}

func (d *daemonProc) mustGit(dir string, args ...string) string {
	d.t.Helper()
	out, code := d.git(dir, args...)
	if code != 0 {
		d.t.Fatalf("git %v: exit %d:\n%s\ndaemon log:\n%s", args, code, out, tail(d.log(), 4000))
	}
	return out
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// commit writes files and commits them all.
func (d *daemonProc) commit(dir, msg string, files map[string]string) {
	d.t.Helper()
	writeFiles(d.t, dir, files)
	d.mustGit(dir, "add", "-A")
	d.mustGit(dir, "commit", "-q", "-m", msg)
}

func httpBody(url string) (int, string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// loadLoop requests url until stopped and counts the failures (an error or a
// status of 500 or more), remembering the first few.
type loadLoop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	done       chan struct{}
}

func startLoad(url string) *loadLoop {
	l := &loadLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			code, _, err := httpBody(url)
			if err != nil || code >= 500 {
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 5 {
					l.errs = append(l.errs, fmt.Sprintf("%s: %d %v", time.Now().Format("15:04:05.000"), code, err))
				}
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return l
}

func (l *loadLoop) end() {
	close(l.stop)
	<-l.done
}

// helloApp answers with a greeting from the config var GREETING.
const helloApp = `import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(1)
        body = ("<h1>Hello again, %s</h1>\n" % os.environ.get("GREETING", "world")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Hello).serve_forever()
`

// syncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pushUntil starts git push fcm main in dir, in a process group of its own
// (as a shell runs it), and returns once its output shows want.
func (d *daemonProc) pushUntil(t *testing.T, dir, want string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	env := append(append(os.Environ(), gitEnv...), "FCM_HOST=http://"+daemonListen, "FCM_TOKEN="+d.token(), "HOME="+dir)
	return startPush(t, dir, env, "fcm", want)
}

// startPush starts git push remote main in dir with env, in a process group
// of its own, and returns once its output shows want (within 3 minutes).
func startPush(t *testing.T, dir string, env []string, remote, want string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	push := exec.Command("git", "push", remote, "main")
	push.Dir, push.Env = dir, env
	buf := &syncBuffer{}
	push.Stdout, push.Stderr = buf, buf
	push.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Minute); !strings.Contains(buf.String(), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(-push.Process.Pid, syscall.SIGKILL)
			t.Fatalf("the push never printed %q:\n%s", want, buf.String())
		}
	}
	return push, buf
}

// TestDeploy_QuickStart is the design's quick start, verbatim, then what must
// hold around it: a broken release never replaces a working one, requests never
// fail during deploys, and pushes that must be refused are.
func TestDeploy_QuickStart(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	// VMs may be suspended (a push wakes one, below), but none sleeps by itself.
	sleepy := []string{"--suspend", "on", "--suspend-after", "off"}
	// A real Prometheus scrapes the daemon's metrics throughout.
	d := startDaemonHV(t, "qemu", dataDir, append(sleepy, "--metrics-listen", metricsListen)...)
	prom := startPrometheus(t, metricsListen)
	work := t.TempDir()
	d.mustGit(work, "init", "-q", "-b", "main")
	out := d.mustCLI(work, "create", "--name", "hello")
	if !strings.Contains(out, "Git remote fcm: http://"+daemonListen+"/git/hello.git") {
		t.Fatalf("create inside a git work tree did not add the remote:\n%s", out)
	}
	vm := d.vms(work)["hello"]
	url := fmt.Sprintf("http://%s:3000/", vm.IP)

	d.commit(work, "hello", map[string]string{
		"Procfile":   "web: python3 -m http.server 3000\n",
		"index.html": "<h1>Hello World</h1>\n",
	})
	first := strings.TrimSpace(d.mustGit(work, "rev-parse", "HEAD"))
	out = d.mustGit(work, "push", "fcm", "main")
	t.Logf("git push fcm main:\n%s", out)
	for _, want := range []string{"remote: -----> Building hello v1 from " + first[:7], "Procfile declares types -> web",
		"remote: -----> Deploy successful! v1 is live", "remote:        http://" + vm.IP + ":3000", "* [new branch]      main -> main"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	if code, body, err := httpBody(url); err != nil || code != 200 || !strings.Contains(body, "<h1>Hello World</h1>") {
		t.Fatalf("GET %s = %d %q %v", url, code, body, err)
	}

	t.Run("no downtime through a good and a crashing deploy", func(t *testing.T) {
		load := startLoad(url)
		d.commit(work, "v2", map[string]string{"app.py": helloApp, "Procfile": "web: python3 app.py\n"})
		out := d.mustGit(work, "push", "fcm", "main")
		if !strings.Contains(out, "Deploy successful! v2 is live") {
			t.Errorf("second push:\n%s", out)
		}
		good := strings.TrimSpace(d.mustGit(work, "rev-parse", "HEAD"))
		d.commit(work, "crash", map[string]string{"Procfile": "web: echo starting up; echo 'no database' >&2; exit 3\n"})
		out, code := d.git(work, "push", "fcm", "main")
		time.Sleep(2 * time.Second) // the old release is stopped in the background: keep measuring
		load.end()
		if code == 0 {
			t.Fatalf("a crashing release was accepted:\n%s", out)
		}
		t.Logf("crashing push:\n%s", out)
		for _, want := range []string{"web exited with status 3", "no database", "v3 was not released; v2 keeps serving", "(pre-receive hook declined)"} {
			if !strings.Contains(out, want) {
				t.Errorf("crashing push output lacks %q:\n%s", want, out)
			}
		}
		if remote := strings.Fields(d.mustGit(work, "ls-remote", "fcm", "refs/heads/main"))[0]; remote != good {
			t.Errorf("remote main = %s after a rejected push, want %s", remote, good)
		}
		if n := load.failed.Load(); n != 0 || load.ok.Load() < 20 {
			t.Errorf("requests during deploys: %d ok, %d failed: %v", load.ok.Load(), n, load.errs)
		}
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again") {
			t.Errorf("after the rejected push the app serves %q", body)
		}
		d.mustGit(work, "reset", "-q", "--hard", good)
	})

	t.Run("a build that fails keeps the release", func(t *testing.T) {
		d.commit(work, "bad procfile", map[string]string{"Procfile": "web python3 -m http.server\n"})
		out, code := d.git(work, "push", "fcm", "main")
		if code == 0 || !strings.Contains(out, "Procfile line 1: want 'type: command'") {
			t.Errorf("bad Procfile: exit %d:\n%s", code, out)
		}
		d.mustGit(work, "reset", "-q", "--hard", "HEAD~1")
	})

	t.Run("refused pushes", func(t *testing.T) {
		d.mustGit(work, "checkout", "-q", "-b", "feature")
		out, code := d.git(work, "push", "fcm", "feature")
		if code == 0 || !strings.Contains(out, `the branch "feature" was not pushed. To deploy it: git push fcm feature:main`) {
			t.Errorf("push of another branch: exit %d:\n%s", code, out)
		}
		d.mustGit(work, "checkout", "-q", "main")
		// A wrong token, straight in the URL (no helper involved).
		out, code = d.git(work, "-c", "credential.helper=", "push", "http://fcm:wrong@"+daemonListen+"/git/hello.git", "main")
		if code == 0 || !strings.Contains(out, "Authentication failed") {
			t.Errorf("push with a wrong token: exit %d:\n%s", code, out)
		}
		out, code = d.git(work, "push", "http://"+daemonListen+"/git/nosuch.git", "main")
		if code == 0 || !strings.Contains(out, `no app named "nosuch"`) {
			t.Errorf("push to a missing app: exit %d:\n%s", code, out)
		}
	})

	t.Run("clone gets what runs", func(t *testing.T) {
		dir := t.TempDir()
		d.mustGit(dir, "clone", "-q", "http://fcm:"+d.token()+"@"+daemonListen+"/git/hello.git", "c")
		if b, err := os.ReadFile(filepath.Join(dir, "c", "app.py")); err != nil || !strings.Contains(string(b), "Hello again") {
			t.Errorf("clone: %q %v", b, err)
		}
	})

	t.Run("releases, config, rollback, run, ps, logs", func(t *testing.T) {
		out := d.mustCLI(work, "releases")
		for _, want := range []string{"=== hello Releases - Current: v2", "v4  Deploy ", "failed: Procfile line 1", "v3  Deploy ", "web exited with status 3", "v1  Deploy " + first[:7]} {
			if !strings.Contains(out, want) {
				t.Errorf("releases lacks %q:\n%s", want, out)
			}
		}
		if out := d.mustCLI(work, "releases", "output", "v3"); !strings.Contains(out, "-----> Building hello v3") || !strings.Contains(out, "no database") {
			t.Errorf("releases output v3:\n%s", out)
		}
		if out := d.mustCLI(work, "config", "set", "GREETING=hola"); !strings.Contains(out, "Setting GREETING and restarting hello... done, v5") {
			t.Errorf("config set: %s", out)
		}
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after config set the app says %q", body)
		}
		if out := d.mustCLI(work, "config"); !strings.Contains(out, "GREETING=hola") {
			t.Errorf("config: %s", out)
		}
		if out := d.mustCLI(work, "rollback"); !strings.Contains(out, "done, v6 (Rollback to v1)") {
			t.Errorf("rollback: %s", out)
		}
		if _, body, _ := httpBody(url); !strings.Contains(body, "<h1>Hello World</h1>") {
			t.Errorf("after the rollback to v1 the app says %q", body)
		}
		d.mustCLI(work, "rollback", "v5")
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after the rollback to v5 the app says %q", body)
		}
		if out := d.mustCLI(work, "run", "--", "sh", "-c", "echo greeting=$GREETING in $PWD"); !strings.Contains(out, "greeting=hola in /srv/app/builds/2") {
			t.Errorf("run: %q", out)
		}
		if _, code := d.cli(work, "run", "--", "sh", "-c", "exit 3"); code != 3 {
			t.Errorf("run -- sh -c 'exit 3' exited %d", code)
		}
		if out := d.mustCLI(work, "ps"); !regexp.MustCompile(`web\.1\s+v7\s+up\s+0`).MatchString(out) {
			t.Errorf("ps:\n%s", out)
		}
		// logs -f shows a request made while it runs.
		cmd := exec.Command(os.Getenv("FCM_BIN"), "logs", "-f", "-n", "5")
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "FCM_HOST=http://"+daemonListen, "FCM_TOKEN="+d.token())
		var buf syncBuffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		time.Sleep(time.Second)
		httpBody(url + "logs-probe-42")
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(buf.String(), "GET /logs-probe-42") && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(buf.String(), "app[web.1]:") || !strings.Contains(buf.String(), "GET /logs-probe-42") {
			t.Errorf("logs -f did not show the request:\n%s", buf.String())
		}
	})

	t.Run("a fork is a preview of the app", func(t *testing.T) {
		d.mustCLI(work, "fork", "hello", "--name", "hello-preview")
		defer d.mustCLI(work, "destroy", "hello-preview")
		fork := d.vms(work)["hello-preview"]
		if _, body, _ := httpBody(fmt.Sprintf("http://%s:3000/", fork.IP)); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("the fork's app says %q", body)
		}
		if out := d.mustCLI(work, "config", "hello-preview"); !strings.Contains(out, "GREETING=hola") {
			t.Errorf("the fork's config vars: %s", out)
		}
		if out := d.mustCLI(work, "releases", "hello-preview"); !strings.Contains(out, "Current: v7") || !strings.Contains(out, "v1  Deploy "+first[:7]) {
			t.Errorf("the fork's releases:\n%s", out)
		}
		// fcm stats of the fork: a busy loop is about one vCPU busy; memory
		// grows by what the guest allocates (a fresh VM has touched little).
		stats := func() api.VMStats {
			var st api.VMStats
			if err := json.Unmarshal([]byte(d.mustCLI(work, "stats", "hello-preview", "--json")), &st); err != nil {
				t.Fatal(err)
			}
			return st
		}
		idle := stats()
		busy := exec.Command(os.Getenv("FCM_BIN"), "run", "-a", "hello-preview", "--", "sh", "-c", `end=$(($(date +%s)+6)); while [ $(date +%s) -lt $end ]; do :; done`)
		busy.Dir = work
		busy.Env = append(os.Environ(), "FCM_HOST=http://"+daemonListen, "FCM_TOKEN="+d.token())
		if err := busy.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		during := stats()
		busy.Wait()
		if during.CPUPercent < 80 || during.State != "running" || during.Uptime <= 0 || during.NetworkIn <= 0 || during.DiskBytes <= 0 {
			t.Errorf("fcm stats during a busy loop: %+v (idle: %.0f%% CPU)", during, idle.CPUPercent)
		}
		d.mustCLI(work, "run", "-a", "hello-preview", "--", "sh", "-c", "head -c 300M /dev/zero | tail > /dev/null")
		if after := stats(); after.MemoryBytes < idle.MemoryBytes+200<<20 {
			t.Errorf("fcm stats: memory %d MiB after the guest allocated 300 MiB, %d MiB before", after.MemoryBytes>>20, idle.MemoryBytes>>20)
		}
		if out := d.mustCLI(work, "stats", "hello-preview"); !strings.Contains(out, "hello-preview  running, up ") || !strings.Contains(out, "of 1.0 GiB") {
			t.Errorf("fcm stats:\n%s", out)
		}
		t.Logf("fcm stats hello-preview: CPU %.0f%% idle, %.0f%% busy; memory %d MiB", idle.CPUPercent, during.CPUPercent, idle.MemoryBytes>>20)

		// Its own from here: a config change there is not the source's.
		d.mustCLI(work, "config", "set", "-a", "hello-preview", "GREETING=preview")
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("a config change in the fork reached the source: %q", body)
		}
	})

	t.Run("metrics through a real Prometheus", func(t *testing.T) {
		atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
		waitQuery(t, prom, `fcm_vms{state="running"}`, atLeast(1))
		waitQuery(t, prom, `fcm_api_requests_total{route="POST /v1/vms",code="200"}`, atLeast(1))
		waitQuery(t, prom, `fcm_api_requests_total{route="POST /v1/vms/{name}/fork"}`, atLeast(1))
		waitQuery(t, prom, `fcm_api_requests_total{route="DELETE /v1/vms/{name}"}`, atLeast(1)) // the fork's destroy
		waitQuery(t, prom, `fcm_operation_duration_seconds_count{op="create"}`, atLeast(2))     // a fork is a create
		waitQuery(t, prom, `fcm_operation_duration_seconds_count{op="deploy"}`, atLeast(3))
		waitQuery(t, prom, `fcm_deploys_total{result="succeeded"}`, atLeast(2))
		waitQuery(t, prom, `fcm_deploys_total{result="failed"}`, atLeast(1)) // the crashing push
		if create := waitQuery(t, prom, `fcm_operation_duration_seconds_sum{op="create"} / fcm_operation_duration_seconds_count{op="create"}`, atLeast(0.5)); create > 120 {
			t.Errorf("a create took %.1f s on average, by the metrics", create)
		}
		waitQuery(t, prom, `fcm_vm_memory_bytes{vm="hello"}`, atLeast(64<<20))
		waitQuery(t, prom, `fcm_vm_network_receive_bytes_total{vm="hello"}`, atLeast(1))
		// A busy loop of 4 s in the guest: its CPU seconds grow by about that.
		before := waitQuery(t, prom, `fcm_vm_cpu_seconds_total{vm="hello"}`, atLeast(1))
		d.mustCLI(work, "run", "--", "sh", "-c", `end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do :; done`)
		after := waitQuery(t, prom, `fcm_vm_cpu_seconds_total{vm="hello"}`, atLeast(before+3))
		t.Logf("hello's CPU seconds: %.1f before a 4 s busy loop, %.1f after", before, after)
	})

	// The daemon killed during a release (here, not in a subtest: the test goes on
	// with the restarted daemon).
	{
		d.commit(work, "slow release", map[string]string{"Procfile": "web: python3 app.py\nrelease: echo migrating; sleep 60\n"})
		push, buf := d.pushUntil(t, work, "migrating")
		d.stop(syscall.SIGKILL)
		if err := push.Wait(); err == nil {
			t.Errorf("the push succeeded though the daemon was killed:\n%s", buf.String())
		}
		d = startDaemonHV(t, "qemu", dataDir, sleepy...)
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after the kill the app says %q", body)
		}
		if out := d.mustCLI(work, "releases"); !strings.Contains(out, "v8  Deploy ") || !strings.Contains(out, "interrupted: the daemon stopped") || !strings.Contains(out, "Current: v7") {
			t.Errorf("releases after the kill:\n%s", out)
		}
		// A push to a suspended app wakes it first.
		d.mustCLI(work, "suspend")
		d.commit(work, "quick release", map[string]string{"Procfile": "web: python3 app.py\nrelease: echo migrated\n"})
		out := d.mustGit(work, "push", "fcm", "main")
		for _, want := range []string{"remote: -----> Waking hello...", "remote:        hello is awake (", "Running release command: echo migrated", "Procfile declares types -> web, release", "Deploy successful! v9 is live"} {
			if !strings.Contains(out, want) {
				t.Errorf("push after the restart lacks %q:\n%s", want, out)
			}
		}
	}

	t.Run("a pusher who goes away cancels the deploy", func(t *testing.T) {
		d.commit(work, "cancel me", map[string]string{"Procfile": "web: python3 app.py\nrelease: echo cancel-me; sleep 60\n"})
		push, _ := d.pushUntil(t, work, "cancel-me")
		// Ctrl+C: the whole process group (git push runs git-remote-http).
		syscall.Kill(-push.Process.Pid, syscall.SIGINT)
		push.Wait()
		deadline := time.Now().Add(20 * time.Second)
		var rels string
		for time.Now().Before(deadline) {
			if rels = d.mustCLI(work, "releases"); strings.Contains(rels, "v10  Deploy ") && !strings.Contains(rels, "pending") {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(rels, "Current: v9") || !regexp.MustCompile(`v10  Deploy .*failed`).MatchString(rels) {
			t.Errorf("releases after the pusher went away:\n%s", rels)
		}
		if out := d.mustCLI(work, "run", "--", "sh", "-c", "pgrep -x sleep || echo no-release-command-left"); !strings.Contains(out, "no-release-command-left") {
			t.Errorf("the release command still runs in the VM: %q", out)
		}
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after the canceled deploy the app says %q", body)
		}
		d.mustGit(work, "reset", "-q", "--hard", "HEAD~1")
	})

	t.Run("a second push waits for the first", func(t *testing.T) {
		remote := "http://fcm:" + d.token() + "@" + daemonListen + "/git/hello.git"
		other := filepath.Join(t.TempDir(), "other")
		d.mustGit(filepath.Dir(other), "clone", "-q", remote, other)
		d.commit(work, "first", map[string]string{"Procfile": "web: python3 app.py\nrelease: echo first-release; sleep 8\n"})
		first, firstOut := d.pushUntil(t, work, "first-release")
		d.commit(other, "second", map[string]string{"second.txt": "2\n"})
		out, code := d.git(other, "push", remote, "main")
		if err := first.Wait(); err != nil {
			t.Errorf("the first push failed: %v\n%s", err, firstOut.String())
		}
		head := strings.TrimSpace(d.mustGit(work, "rev-parse", "HEAD"))
		if code == 0 || !strings.Contains(out, "-----> Waiting: a deploy of "+head[:7]+" by admin is in progress") ||
			!strings.Contains(out, "main moved to "+head[:7]+" while this push waited") {
			t.Errorf("the second push: exit %d:\n%s", code, out)
		}
		if rels := d.mustCLI(work, "releases"); !strings.Contains(rels, "Current: v11") || strings.Contains(rels, "v12") {
			t.Errorf("releases after two pushes at once:\n%s", rels)
		}
	})

	t.Run("a release that ignores SIGTERM does not take the next ones down", func(t *testing.T) {
		stubborn := `web: python3 -c 'import signal, runpy; signal.signal(signal.SIGTERM, signal.SIG_IGN); runpy.run_path("app.py")'` + "\n"
		d.commit(work, "stubborn", map[string]string{"Procfile": stubborn})
		d.mustGit(work, "push", "fcm", "main") // v12
		d.commit(work, "polite", map[string]string{"Procfile": "web: python3 app.py\n"})
		d.mustGit(work, "push", "fcm", "main") // v13: v12 takes its 10 s to be killed
		d.commit(work, "again", map[string]string{"again.txt": "again\n"})
		// v12 still holds the slot v14 needs until it is killed: v14 waits for it.
		if out := d.mustGit(work, "push", "fcm", "main"); !strings.Contains(out, "Waiting for the previous release to finish its requests and stop") ||
			!strings.Contains(out, "Deploy successful! v14 is live") {
			t.Errorf("third push:\n%s", out)
		}
		time.Sleep(12 * time.Second)
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after three quick deploys the app says %q", body)
		}
		if out := d.mustCLI(work, "ps"); !regexp.MustCompile(`web\.1\s+v14\s+up\s+0`).MatchString(out) {
			t.Errorf("ps after three quick deploys:\n%s", out)
		}
	})

	t.Run("an app answering 500 fails its health check", func(t *testing.T) {
		d.mustCLI(work, "config", "set", "FCM_HEALTHCHECK_TIMEOUT=5") // v15
		d.commit(work, "broken", map[string]string{"Procfile": "web: python3 broken.py\n", "broken.py": `import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(500, "database unreachable")
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
`})
		out, code := d.git(work, "push", "fcm", "main")
		if code == 0 || !strings.Contains(out, "web did not answer on port 3000 within 5s: it answered HTTP 500") || !strings.Contains(out, "v16 was not released; v15 keeps serving") {
			t.Errorf("push of an app answering 500: exit %d:\n%s", code, out)
		}
		d.mustGit(work, "reset", "-q", "--hard", "HEAD~1")
		d.mustCLI(work, "config", "unset", "FCM_HEALTHCHECK_TIMEOUT") // v17
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after the failed health check the app says %q", body)
		}
	})

	t.Run("a crashed process is restarted", func(t *testing.T) {
		httpBody(url + "crash")
		deadline := time.Now().Add(20 * time.Second)
		for {
			if code, body, _ := httpBody(url); code == 200 && strings.Contains(body, "Hello again, hola") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the app did not come back after crashing")
			}
			time.Sleep(200 * time.Millisecond)
		}
		if out := d.mustCLI(work, "ps"); !regexp.MustCompile(`web\.1\s+v17\s+up\s+1\s`).MatchString(out) {
			t.Errorf("ps after a crash:\n%s", out)
		}
		if out := d.mustCLI(work, "logs"); !strings.Contains(out, "fcm[supervisor]: web.1 exited with status 1; restarting in 1s") {
			t.Errorf("logs after a crash:\n%s", out)
		}
	})

	t.Run("stop and start bring the app back", func(t *testing.T) {
		d.commit(work, "a worker", map[string]string{"Procfile": "web: python3 app.py\nworker: while :; do echo worker-tick; sleep 1; done\n"})
		if out := d.mustGit(work, "push", "fcm", "main"); !strings.Contains(out, "Procfile declares types -> web, worker") || !strings.Contains(out, "Starting web, worker (v18)") {
			t.Errorf("push with a worker:\n%s", out)
		}
		d.mustCLI(work, "stop")
		d.mustCLI(work, "start")
		code, body, err := httpBody(url)
		if err != nil || code != 200 || !strings.Contains(body, "Hello again, hola") {
			t.Errorf("after stop/start: %d %q %v", code, body, err)
		}
		if out := d.mustCLI(work, "ps"); !regexp.MustCompile(`web\.1\s+v18\s+up`).MatchString(out) || !regexp.MustCompile(`worker\.1\s+v18\s+up`).MatchString(out) {
			t.Errorf("ps after stop/start:\n%s", out)
		}
		time.Sleep(1500 * time.Millisecond)
		if out := d.mustCLI(work, "logs", "-n", "200"); !strings.Contains(out, "fcm[supervisor]: web.1 started v18") || !strings.Contains(out, "app[worker.1]: worker-tick") {
			t.Errorf("logs after start:\n%s", out)
		}
	})

	id := d.vms(work)["hello"].ID
	d.mustCLI(work, "destroy", "hello")
	if _, err := os.Stat(filepath.Join(dataDir, "repos", id+".git")); !os.IsNotExist(err) {
		t.Errorf("destroy left the repository: %v", err)
	}
	// Each change is in the audit trail once: deploys by who pushed, with
	// the release, the commit and how it went; config changes by name only.
	wantEventsLikeOnce(t, d.auditEvents(t, "hello"), `create by admin on hello: ok`,
		`deploy by admin on hello \(v1 of `+first[:7]+`\): ok`,
		`deploy by admin on hello \(v3 of [0-9a-f]{7}\): the build in hello failed: Process exited with status 1`,
		`config by admin on hello \(set GREETING\): ok`,
		`rollback by admin on hello \(v6: Rollback to v1\): ok`, `rollback by admin on hello \(v7: Rollback to v5\): ok`,
		`suspend by admin on hello: ok`,
		`deploy by admin on hello \(v10 of [0-9a-f]{7}\): canceled: the pusher went away`,
		`config by admin on hello \(unset FCM_HEALTHCHECK_TIMEOUT\): ok`,
		`stop by admin on hello: ok`, `start by admin on hello: ok`, `destroy by admin on hello: ok`)
	if evs := d.auditEvents(t, "hello-preview"); len(evs) != 3 || eventKey(evs[0]) != "fork by admin on hello-preview (of hello): ok" {
		t.Errorf("the fork's events: %+v", evs)
	}
}
