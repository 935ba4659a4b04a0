package e2e

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
)

// TestConsole_Sessions: sessions are tmux sessions in the VM, made, listed and
// ended through the API and CLI, and still there after a daemon restart.
func TestConsole_Sessions(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemon(t, dataDir)
	work := t.TempDir()
	d.mustCLI(work, "create", "--name", "shell1")
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
	d = startDaemon(t, dataDir)
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
	d.mustCLI(work, "destroy")
}
