package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// hostTmux is a tmux server on the host, private to a test, whose panes run the
// real fcm CLI as a person would in a terminal.
type hostTmux struct {
	t      *testing.T
	socket string
}

func newHostTmux(t *testing.T) *hostTmux {
	h := &hostTmux{t: t, socket: fmt.Sprintf("fcm-e2e-%d", time.Now().UnixNano())}
	t.Cleanup(func() { exec.Command("tmux", "-L", h.socket, "kill-server").Run() })
	return h
}

func (h *hostTmux) tmux(args ...string) string {
	h.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", h.socket}, args...)...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// run starts a window named name running cmd (kept open after it exits). The
// exit status is printed on a line of its own after `stty sane`, since a
// killed client cannot take its terminal out of raw mode.
func (h *hostTmux) run(name, dir string, env []string, cmd string) {
	h.t.Helper()
	script := "cd " + dir + " && env " + strings.Join(env, " ") + " " + cmd +
		"; s=$?; stty sane; echo; echo '[fcm exited]' $s; sleep 600"
	if _, err := exec.Command("tmux", "-L", h.socket, "has-session", "-t", "main").CombinedOutput(); err != nil {
		h.tmux("new-session", "-d", "-s", "main", "-n", name, "-x", "120", "-y", "40", script)
		return
	}
	h.tmux("new-window", "-t", "main", "-n", name, script)
}

func (h *hostTmux) keys(name string, keys ...string) {
	h.t.Helper()
	h.tmux(append([]string{"send-keys", "-t", "main:" + name}, keys...)...)
}

// screen is the window's visible text, lines wrapped at its width joined again.
func (h *hostTmux) screen(name string) string {
	return h.tmux("capture-pane", "-p", "-J", "-t", "main:"+name)
}

// waitFor polls the window's screen until it contains want.
func (h *hostTmux) waitFor(name, want string) string {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := h.screen(name)
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("window %s never showed %q; screen:\n%s", name, want, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// terminal is what a person at a host terminal has: the CLI's environment for
// this daemon, a private host tmux to type into, and the fcm binary.
func (d *daemonProc) terminal(t *testing.T) (env []string, h *hostTmux, bin string) {
	env = []string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + d.token(), "HOME=" + t.TempDir()}
	return env, newHostTmux(t), os.Getenv("FCM_BIN")
}

// TestConsole_Attach drives `fcm console` in a host terminal: a command's
// output, detach and reattach with the shell's state intact, a window resize,
// exit ending the session, and a clear error when attaching to a gone session.
func TestConsole_Attach(t *testing.T) {
	d, work := daemonWithVM(t, "term1")
	env, h, bin := d.terminal(t)

	h.run("a", work, env, bin+" console")
	h.waitFor("a", "Session: brook")
	h.waitFor("a", "Reconnect with: fcm console term1 -s brook")
	h.waitFor("a", "root@term1")
	h.keys("a", "X=kept; echo $((6*7))", "Enter")
	h.waitFor("a", "42")

	h.keys("a", "C-]")
	h.waitFor("a", "Detached from brook")
	h.waitFor("a", "[fcm exited] 0")
	if out := d.mustCLI(work, "console", "ls"); !strings.Contains(out, "brook") {
		t.Errorf("console ls after detach:\n%s", out)
	}

	h.run("b", work, env, bin+" console term1 -s brook")
	h.waitFor("b", "Session: brook")
	h.keys("b", "echo X is $X", "Enter")
	h.waitFor("b", "X is kept")

	h.tmux("resize-window", "-t", "main:b", "-x", "100", "-y", "30")
	time.Sleep(500 * time.Millisecond)
	h.keys("b", "stty size", "Enter")
	h.waitFor("b", "29 100") // 30 rows, less the guest tmux's status line

	h.keys("b", "exit", "Enter")
	h.waitFor("b", "Session brook ended.")
	if out := d.mustCLI(work, "console", "ls"); strings.Contains(out, "brook") {
		t.Errorf("ended session still listed:\n%s", out)
	}
	out, code := d.cli(work, "console", "term1", "-s", "brook")
	if code == 0 || !strings.Contains(out, `vm "term1" has no session "brook"`) {
		t.Errorf("attach to an ended session: exit %d, %q", code, out)
	}

	// The token is checked before the WebSocket upgrade.
	for _, auth := range []string{"", "Bearer fcm_wrong"} {
		req, _ := http.NewRequest("GET", "http://"+daemonListen+"/v1/vms/term1/sessions/brook/attach", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("attach with %q: %d %s, want 401 JSON", auth, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	d.mustCLI(work, "destroy", "term1")
}
