package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/netns"
	"github.com/fcmhost/fcm/internal/vmm"
)

// binary is the stand-in the tests run, built once by TestMain.
var binary = os.Getenv("FCM_STANDIN_BIN")

// TestMain builds the stand-in (unless FCM_STANDIN_BIN names one), then runs the tests again inside a network
// namespace of their own (netns.Reexec), where they make taps and a bridge.
func TestMain(m *testing.M) {
	if netns.Current() == "" && binary != "" {
		// A binary given by the caller (one built with -race, say): no build.
		code, err := netns.Reexec("fcm-standin-test")
		if err != nil {
			fmt.Fprintf(os.Stderr, "standin tests: %v\n", err)
		}
		os.Exit(code)
	}
	if netns.Current() == "" {
		dir, err := os.MkdirTemp("", "fcm-standin-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// Tests run it as an unprivileged VM user too, as fcm's driver does.
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		bin := filepath.Join(dir, "firecracker")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build: %v: %s\n", err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		os.Setenv("FCM_STANDIN_BIN", bin)
		code, err := netns.Reexec("fcm-standin-test")
		if err != nil {
			fmt.Fprintf(os.Stderr, "standin tests: %v\n", err)
		}
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer safe for a process's output copier and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// standin is one running stand-in process and an HTTP client for its socket.
type standin struct {
	t              *testing.T
	dir, sock      string
	record         string
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan struct{} // closed when the process has been reaped
	client         *http.Client
}

// tempDir is a short temporary directory (unix socket paths are limited to 107 bytes).
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcsi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// start runs the stand-in with --api-sock in a fresh directory plus args, and
// waits until its socket accepts connections.
func start(t *testing.T, env []string, args ...string) *standin {
	t.Helper()
	return startWith(t, env, nil, args...)
}

// startWith is start that lets prepare change the command before it runs (its
// credentials, say), given the stand-in's directory.
func startWith(t *testing.T, env []string, prepare func(dir string, cmd *exec.Cmd), args ...string) *standin {
	t.Helper()
	s := &standin{t: t, dir: tempDir(t), stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	s.sock = filepath.Join(s.dir, "fc.sock")
	s.record = s.sock + ".requests.jsonl"
	s.cmd = exec.Command(binary, append([]string{"--api-sock", s.sock}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if prepare != nil {
		prepare(s.dir, s.cmd)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("stand-in stderr:\n%s", s.stderr)
			t.Logf("stand-in stdout (guest console):\n%s", s.stdout)
		}
	})
	s.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.sock)
		}},
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", s.sock); err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("stand-in exited before serving: %v\n%s", s.cmd.ProcessState, s.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("stand-in socket %s did not appear", s.sock)
		}
	}
}

// stop ends the process: SIGTERM, then SIGKILL.
func (s *standin) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// waitExit waits up to d for the process to end.
func (s *standin) waitExit(d time.Duration) bool {
	select {
	case <-s.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// reply is what a client sees of one request.
type reply struct {
	status int
	body   []byte
	fault  string // fault_message of a 400
}

// do sends one request; body "" sends none.
func (s *standin) do(method, path, body string) reply {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	r := reply{status: resp.StatusCode}
	r.body, _ = io.ReadAll(resp.Body)
	if r.status == http.StatusBadRequest {
		var e map[string]any
		if err := json.Unmarshal(r.body, &e); err != nil || len(e) != 1 {
			s.t.Fatalf("%s %s: 400 body %q is not {\"fault_message\": ...}", method, path, r.body)
		}
		f, ok := e["fault_message"].(string)
		if !ok || f == "" {
			s.t.Fatalf("%s %s: 400 body %q has no fault_message", method, path, r.body)
		}
		r.fault = f
	}
	return r
}

// want fails the test unless the request answers status (and, for a 400, a
// fault_message containing every one of faults).
func (s *standin) want(method, path, body string, status int, faults ...string) reply {
	s.t.Helper()
	r := s.do(method, path, body)
	if r.status != status {
		s.t.Fatalf("%s %s %s: status %d (%s), want %d", method, path, body, r.status, r.body, status)
	}
	if status == http.StatusNoContent && len(r.body) != 0 {
		s.t.Fatalf("%s %s: 204 with a body %q", method, path, r.body)
	}
	for _, f := range faults {
		if !strings.Contains(r.fault, f) {
			s.t.Fatalf("%s %s %s: fault %q does not mention %q", method, path, body, r.fault, f)
		}
	}
	return r
}

// readRecord returns the request log's lines.
func readRecord(t *testing.T, path string) []record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []record
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("record line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// sh runs a command and fails the test when it fails.
func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// makeTap creates a tap device in the test's namespace, removed at cleanup.
func makeTap(t *testing.T, name string) {
	t.Helper()
	sh(t, "ip", "tuntap", "add", "dev", name, "mode", "tap")
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	sh(t, "ip", "link", "set", name, "up")
}

// tempFile writes a file in a fresh directory and returns its path.
func tempFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(tempDir(t), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// driveOpt is one -drive of QEMU's command line: id and readonly=on or not.
var driveOpt = regexp.MustCompile(`-drive id=(\w+),file=\S+?,format=raw,if=none,(readonly=on|discard=unmap)`)

// tscArg is what qemu.MachineArgs adds to the command line under TCG.
var tscArg = regexp.MustCompile(` tsc_early_khz=[0-9]+$`)

// launch is what the stand-in's last InstanceStart ran QEMU with, from its log:
// the kernel command line (-append, less the tsc_early_khz= QEMU's TCG needs)
// and the drives in order, each "id:ro" or "id:rw".
func (s *standin) launch() (cmdline string, drives []string) {
	s.t.Helper()
	log := s.stderr.String()
	i := strings.LastIndex(log, "InstanceStart: ")
	if i < 0 {
		s.t.Fatalf("no InstanceStart in the stand-in's log:\n%s", log)
	}
	line, _, _ := strings.Cut(log[i:], "\n")
	_, rest, ok := strings.Cut(line, " -append ")
	if !ok {
		s.t.Fatalf("no -append in %s", line)
	}
	end := len(rest)
	for _, next := range []string{" -drive ", " -netdev ", " -device "} {
		if j := strings.Index(rest, next); j >= 0 && j < end {
			end = j
		}
	}
	for _, m := range driveOpt.FindAllStringSubmatch(line, -1) {
		mode := "rw"
		if m[2] == "readonly=on" {
			mode = "ro"
		}
		drives = append(drives, m[1]+":"+mode)
	}
	return tscArg.ReplaceAllString(rest[:end], ""), drives
}

// vmUID is the unprivileged user tests run the stand-in as, as fcm's driver
// runs a VM's hypervisor (vmm.UIDFor).
const vmUID = vmm.UIDBase + 201

// sandboxed prepares the stand-in's command as fcm's Firecracker driver does
// with spec (Dir is the stand-in's own): vmm.PrepareSandbox owns the directory
// and non-shared drives to vmUID, checks it can read the kernel, initrd and
// shared drives, and the command runs as vmUID.
func sandboxed(t *testing.T, spec vmm.Spec) func(dir string, cmd *exec.Cmd) {
	return func(dir string, cmd *exec.Cmd) {
		t.Helper()
		spec.ID, spec.Dir, spec.UID, spec.GID = "standin", dir, vmUID, vmUID
		sb, err := vmm.PrepareSandbox(spec, true)
		if err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{}
		sb.Apply(cmd.SysProcAttr)
	}
}
