package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/console"
)

// TestConsole_Sessions: sessions are tmux sessions in the VM, made, listed and
// ended through the API and CLI, and still there after a daemon restart.
func TestConsole_Sessions(t *testing.T) {
	d, work := daemonWithVM(t, "shell1")
	c := &client.Client{Host: "http://" + daemonListen, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var ids []string
	for _, want := range []string{"", "", "web-shell1"} {
		s, err := c.CreateSession(ctx, "shell1", want)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	if strings.Join(ids, ",") != "brook,fern,web-shell1" {
		t.Errorf("session ids %v, want brook, fern, web-shell1", ids)
	}
	var ae *api.Error
	if _, err := c.CreateSession(ctx, "shell1", "fern"); !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Errorf("duplicate session: %v", err)
	}
	if _, err := c.CreateSession(ctx, "shell1", "Bad;id"); !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
		t.Errorf("bad id: %v", err)
	}

	out := d.mustCLI(work, "console", "ls")
	for _, id := range ids {
		if !strings.Contains(out, id) {
			t.Errorf("console ls lacks %s:\n%s", id, out)
		}
	}
	if !strings.Contains(out, "shell1") || !strings.HasPrefix(out, "ID") {
		t.Errorf("console ls:\n%s", out)
	}

	if out := d.mustCLI(work, "console", "kill", "shell1", "fern"); !strings.Contains(out, "Killed session fern on shell1") {
		t.Errorf("kill: %s", out)
	}
	out, code := d.cli(work, "console", "kill", "shell1", "fern")
	if code == 0 || !strings.Contains(out, `vm "shell1" has no session "fern" (it has: brook, web-shell1)`) {
		t.Errorf("kill of a gone session: exit %d, %q", code, out)
	}

	// Sessions live in the VM: a daemon restart finds them again.
	d.stop(syscall.SIGTERM)
	d = startDaemon(t, d.dataDir)
	sessions, err := c.ListSessions(ctx, "shell1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sessions {
		got = append(got, s.ID)
	}
	if strings.Join(got, ",") != "brook,web-shell1" {
		t.Errorf("after a daemon restart: %v, want brook, web-shell1", got)
	}

	d.mustCLI(work, "stop")
	if _, err := c.ListSessions(ctx, "shell1"); !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "start it first") {
		t.Errorf("sessions of a stopped vm: %v", err)
	}
	if out, code := d.cli(work, "console"); code == 0 || !strings.Contains(out, "start it first") {
		t.Errorf("fcm console: exit %d, %q", code, out)
	}
	d.mustCLI(work, "destroy", "--yes")
}

// TestConsole_ResumeLosesNothing: output printed while a client's connection
// was down is replayed when it reconnects with where it stopped, even what has
// scrolled off the screen; a new client instead gets the screen as it is.
func TestConsole_ResumeLosesNothing(t *testing.T) {
	d, work := daemonWithVM(t, "resume1")
	c := &client.Client{Host: "http://" + daemonListen, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.CreateSession(ctx, "resume1", "brook"); err != nil {
		t.Fatal(err)
	}
	base := "ws://" + daemonListen + "/v1/vms/resume1/sessions/brook/attach?cols=80&rows=24"

	ws, hello := dialConsole(ctx, t, base, d.token())
	got := readUntil(ctx, t, ws, "root@resume1")
	offset := hello.Offset + int64(len(got))
	// Start slow output, then drop the connection (no detach) while it runs.
	cmd := `for i in $(seq 1 60); do printf 'line-%03d\n' $i; sleep 0.05; done; echo done-$((6*7))`
	if err := ws.Write(ctx, websocket.MessageBinary, []byte(cmd+"\r")); err != nil {
		t.Fatal(err)
	}
	ws.CloseNow()
	time.Sleep(5 * time.Second) // the loop finishes meanwhile

	ws2, hello2 := dialConsole(ctx, t, fmt.Sprintf("%s&stream=%s&since=%d", base, hello.Stream, offset), d.token())
	if hello2.Stream != hello.Stream || hello2.Offset != offset {
		t.Errorf("resume: hello %+v, want stream %s offset %d", hello2, hello.Stream, offset)
	}
	missed := readUntil(ctx, t, ws2, "done-42")
	for _, line := range []string{"line-001", "line-005", "line-030", "line-060"} {
		if !strings.Contains(missed, line) {
			t.Errorf("resumed output lacks %s (scrolled off while disconnected)", line)
		}
	}
	ws2.Close(websocket.StatusNormalClosure, "")

	ws3, _ := dialConsole(ctx, t, base, d.token())
	screen := readUntil(ctx, t, ws3, "done-42")
	if strings.Contains(screen, "line-005") {
		t.Errorf("a new client got history replayed instead of the current screen")
	}
	ws3.Close(websocket.StatusNormalClosure, "")
	d.mustCLI(work, "destroy", "resume1")
}

func dialConsole(ctx context.Context, t *testing.T, u, token string) (*websocket.Conn, console.Control) {
	t.Helper()
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("attach %s: %v", u, err)
	}
	ws.SetReadLimit(1 << 20)
	typ, data, err := ws.Read(ctx)
	var hello console.Control
	if err != nil || typ != websocket.MessageText || json.Unmarshal(data, &hello) != nil || hello.Type != "hello" || hello.Stream == "" {
		t.Fatalf("first frame: %v %q %v, want a hello", typ, data, err)
	}
	return ws, hello
}

// readUntil reads binary frames until their text contains want.
func readUntil(ctx context.Context, t *testing.T, ws *websocket.Conn, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var b strings.Builder
	for !strings.Contains(b.String(), want) {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, b.String())
		}
		if typ == websocket.MessageBinary {
			b.Write(data)
		}
	}
	return b.String()
}
