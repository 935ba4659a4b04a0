package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/client"
)

// TestConsole_StalledGuestStallsNoOther: a guest whose sshd stops answering
// (root in it SIGSTOPs every sshd, the one serving the daemon included) costs
// only its own consoles: another VM's console still attaches at once, the
// listing of all sessions still answers (without the stalled VM), an attach to
// the stalled VM fails within its deadline, and the stalled VM's open console
// is let go once keepalives find the connection dead.
func TestConsole_StalledGuestStallsNoOther(t *testing.T) {
	d, work := daemonWithVM(t, "hard1")
	d.mustCLI(work, "create", "--name", "hard2")
	c := &client.Client{Host: "http://" + daemonListen, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, vm := range []string{"hard1", "hard2"} {
		for _, id := range []string{"brook", "fern"} {
			if _, err := c.CreateSession(ctx, vm, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	// How long an attach to hard2 takes with nothing stalled (the guest is emulated).
	start := time.Now()
	ws0, _ := dialConsole(ctx, t, "ws://"+daemonListen+"/v1/vms/hard2/sessions/fern/attach?cols=120&rows=30", d.token())
	baseline := time.Since(start)
	readUntil(ctx, t, ws0, "root@hard2")
	t.Logf("hard2 console, nothing stalled: hello after %v, prompt after %v", baseline, time.Since(start))
	ws0.Close(websocket.StatusNormalClosure, "detach")

	ws1, _ := dialConsole(ctx, t, "ws://"+daemonListen+"/v1/vms/hard1/sessions/brook/attach?cols=120&rows=30", d.token())
	defer ws1.CloseNow()
	readUntil(ctx, t, ws1, "root@hard1")
	// Every sshd in hard1 (the listener and each connection's) stops, a second
	// after the marker has made it out.
	stop := `echo stopping-$((6*7)); sleep 1; for p in /proc/[0-9]*; do case "$(cat $p/comm 2>/dev/null)" in sshd*) kill -STOP ${p#/proc/};; esac; done`
	if err := ws1.Write(ctx, websocket.MessageBinary, []byte(stop+"\r")); err != nil {
		t.Fatal(err)
	}
	readUntil(ctx, t, ws1, "stopping-42")
	time.Sleep(3 * time.Second)
	stalled := time.Now()

	// An attach to the stalled VM, in the background: it must fail in time.
	stuck := make(chan error, 1)
	go func() {
		ws, _, err := websocket.Dial(ctx, "ws://"+daemonListen+"/v1/vms/hard1/sessions/fern/attach",
			&websocket.DialOptions{HTTPHeader: map[string][]string{"Authorization": {"Bearer " + d.token()}}})
		if err == nil {
			_, _, err = ws.Read(ctx)
			ws.CloseNow()
			if err == nil {
				err = errors.New("attached to a VM whose sshd is stopped")
			}
		}
		stuck <- err
	}()

	time.Sleep(500 * time.Millisecond)
	start = time.Now()
	ws2, hello := dialConsole(ctx, t, "ws://"+daemonListen+"/v1/vms/hard2/sessions/brook/attach?cols=120&rows=30", d.token())
	attached := time.Since(start)
	readUntil(ctx, t, ws2, "root@hard2")
	prompt := time.Since(start)
	t.Logf("hard2 console with hard1 stalled: hello after %v, prompt after %v (stream %s)", attached, prompt, hello.Stream)
	if attached > 5*time.Second {
		t.Errorf("attaching to hard2 took %v while hard1 is stalled", attached)
	}
	if err := ws2.Write(ctx, websocket.MessageBinary, []byte("echo alive-$((6*7))\r")); err != nil {
		t.Fatal(err)
	}
	readUntil(ctx, t, ws2, "alive-42")
	ws2.Close(websocket.StatusNormalClosure, "")

	start = time.Now()
	out := d.mustCLI(work, "console", "ls")
	t.Logf("fcm console ls with hard1 stalled answered after %v:\n%s", time.Since(start), out)
	if !strings.Contains(out, "hard2") || !strings.Contains(out, "fern") {
		t.Errorf("console ls lacks hard2's sessions:\n%s", out)
	}
	if strings.Contains(out, "hard1") {
		t.Errorf("console ls lists hard1, whose sshd is stopped:\n%s", out)
	}

	select {
	case err := <-stuck:
		t.Logf("attach to the stalled hard1 failed after %v: %v", time.Since(stalled), err)
	case <-time.After(90 * time.Second):
		t.Errorf("an attach to the stalled hard1 still waits after 90 s")
	}

	// The open console on hard1 is let go once keepalives find its connection dead.
	rctx, rcancel := context.WithTimeout(ctx, 90*time.Second)
	defer rcancel()
	for {
		_, _, err := ws1.Read(rctx)
		if err == nil {
			continue
		}
		t.Logf("hard1's open console ended %v after the stall: %v", time.Since(stalled), err)
		if websocket.CloseStatus(err) != websocket.StatusGoingAway || !strings.Contains(err.Error(), "lost the connection") {
			t.Errorf("hard1's console: %v, want a going-away close saying the connection was lost", err)
		}
		break
	}
	d.mustCLI(work, "destroy", "hard1")
	d.mustCLI(work, "destroy", "hard2")
}
