package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// fakeDaemon records the requests it gets and answers destroys and rotations.
type fakeDaemon struct {
	mu   sync.Mutex
	reqs []string
}

func (f *fakeDaemon) serve(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		f.mu.Unlock()
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/tokens/admin/rotate":
			json.NewEncoder(w).Encode(api.RotateTokenResponse{Token: "fcm_new", Fingerprint: "abcd0123", File: "/var/lib/firecracker/.token"})
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	t.Cleanup(srv.Close)
	t.Setenv("FCM_HOST", srv.URL)
}

func (f *fakeDaemon) requests() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := strings.Join(f.reqs, "\n")
	f.reqs = nil
	return r
}

// runCLI runs fcm's command line in-process with stdin in.
func runCLI(in io.Reader, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

// `fcm destroy` aiming at the VM ./.fcm names asks first on a terminal and
// refuses without one unless --yes; a VM named on the command line is not
// asked about.
func TestDestroy_ConfirmsTheDotFileTarget(t *testing.T) {
	f := &fakeDaemon{}
	f.serve(t)
	t.Setenv("FCM_TOKEN", "fcm_tok")
	t.Chdir(t.TempDir())
	os.WriteFile(".fcm", []byte("web1\n"), 0o644)
	terminal := false
	old := isTerminal
	isTerminal = func(io.Reader) bool { return terminal }
	t.Cleanup(func() { isTerminal = old })

	out, err := runCLI(strings.NewReader("y\n"), "destroy")
	if err == nil || !strings.Contains(err.Error(), "./.fcm names web1: to destroy it without a terminal to confirm on, run fcm destroy web1 or fcm destroy --yes") {
		t.Errorf("no terminal, no --yes: %v %q", err, out)
	}
	if r := f.requests(); r != "" {
		t.Errorf("sent %s", r)
	}

	terminal = true
	for _, answer := range []string{"n\n", "\n", "whatever\n", ""} {
		out, err := runCLI(strings.NewReader(answer), "destroy")
		if err != errNotConfirmed || !strings.Contains(out, "Destroy web1 (named in ./.fcm) and its disk? [y/N]") {
			t.Errorf("answer %q: %v, %q", answer, err, out)
		}
	}
	if r := f.requests(); r != "" {
		t.Errorf("sent %s after a no", r)
	}
	if _, err := runCLI(strings.NewReader("y\n"), "destroy"); err != nil {
		t.Fatal(err)
	}
	if r := f.requests(); r != "DELETE /v1/vms/web1 Bearer fcm_tok" {
		t.Errorf("after yes: %q", r)
	}
	if _, err := os.Stat(".fcm"); !os.IsNotExist(err) {
		t.Error(".fcm of the destroyed VM kept")
	}

	terminal = false
	os.WriteFile(".fcm", []byte("web2\n"), 0o644)
	if _, err := runCLI(strings.NewReader(""), "destroy", "--yes"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(strings.NewReader(""), "destroy", "web3"); err != nil {
		t.Fatal(err)
	}
	if r := f.requests(); r != "DELETE /v1/vms/web2 Bearer fcm_tok\nDELETE /v1/vms/web3 Bearer fcm_tok" {
		t.Errorf("--yes and a named VM: %q", r)
	}
}

// `fcm token rotate` replaces ~/.fcm-token when the token came from there,
// and prints the new one when it came from FCM_TOKEN.
func TestTokenRotate(t *testing.T) {
	f := &fakeDaemon{}
	f.serve(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("FCM_TOKEN", "")
	path := filepath.Join(home, ".fcm-token")
	os.WriteFile(path, []byte("fcm_old\n"), 0o600)
	out, err := runCLI(nil, "token", "rotate")
	if err != nil || !strings.Contains(out, "written to "+path) || strings.Contains(out, "fcm_new") {
		t.Errorf("rotate with ~/.fcm-token: %v %q", err, out)
	}
	if b, _ := os.ReadFile(path); string(b) != "fcm_new\n" {
		t.Errorf("~/.fcm-token holds %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %#o", fi.Mode().Perm())
	}
	if r := f.requests(); r != "POST /v1/tokens/admin/rotate Bearer fcm_old" {
		t.Errorf("requests %q", r)
	}

	t.Setenv("FCM_TOKEN", "fcm_env")
	out, err = runCLI(nil, "token", "rotate")
	if err != nil || !strings.HasPrefix(out, "fcm_new\n") || !strings.Contains(out, "replace FCM_TOKEN") {
		t.Errorf("rotate with FCM_TOKEN: %v %q", err, out)
	}
	if b, _ := os.ReadFile(path); string(b) != "fcm_new\n" {
		t.Errorf("~/.fcm-token changed: %q", b)
	}

	// A token file others can read: refused before anything is sent.
	t.Setenv("FCM_TOKEN", "")
	os.Chmod(path, 0o644)
	if _, err := runCLI(nil, "token", "rotate"); err == nil || err.Error() != "~/.fcm-token has mode 0644: run chmod 600 ~/.fcm-token" {
		t.Errorf("0644 token file: %v", err)
	}
	f.requests()
	if _, err := runCLI(nil, "ls"); err == nil || !strings.Contains(err.Error(), "has mode 0644") {
		t.Errorf("ls with a 0644 token file: %v", err)
	}
	if r := f.requests(); r != "" {
		t.Errorf("sent %q with a refused token file", r)
	}
}

// TestStateText: ls says why a VM is where it is, and since when it sleeps.
func TestStateText(t *testing.T) {
	slept := time.Now().Add(-3 * time.Minute)
	for _, tc := range []struct {
		vm   api.VM
		want string
	}{
		{api.VM{State: "running"}, "running"},
		{api.VM{State: "starting", Reason: "after host restart"}, "starting (after host restart)"},
		{api.VM{State: "crashed", Reason: "crashed 5 times in 10 min: out of memory"}, "crashed 5 times in 10 min: out of memory"},
		{api.VM{State: "suspended", SuspendedAt: &slept}, "suspended 3m ago"},
	} {
		if got := stateText(tc.vm); got != tc.want {
			t.Errorf("stateText(%+v) = %q, want %q", tc.vm, got, tc.want)
		}
	}
}
