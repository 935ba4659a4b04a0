package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func authenticates(st *store.Store, secret string) bool {
	return st.View(func(tx *store.Tx) error { _, err := tx.TokenFor(secret); return err }) == nil
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %#o, want 0600", path, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// On start the store's admin tokens are exactly the one in .token: replacing
// the file (or rotating) revokes the old one.
func TestEnsureAdminToken_FileIsTheAdminSet(t *testing.T) {
	st, dir := openStore(t), t.TempDir()
	tok, created, err := ensureAdminToken(st, dir, false)
	if err != nil || !created {
		t.Fatalf("first run: created %v, %v", created, err)
	}
	first := readToken(t, tok.Path)
	if !store.ValidSecret(first) || !authenticates(st, first) {
		t.Fatalf("first token %q does not authenticate", first)
	}
	// A second start keeps it.
	if _, created, err := ensureAdminToken(st, dir, false); err != nil || created || !authenticates(st, first) {
		t.Fatalf("second run: created %v, %v", created, err)
	}
	// The operator replaces the file by hand (after a leak): the old one goes.
	second := store.NewSecret()
	os.WriteFile(tok.Path, []byte(second+"\n"), 0o600)
	if _, _, err := ensureAdminToken(st, dir, false); err != nil {
		t.Fatal(err)
	}
	if authenticates(st, first) || !authenticates(st, second) {
		t.Errorf("after replacing .token: old works %v, new works %v", authenticates(st, first), authenticates(st, second))
	}
	// --rotate-admin-token: a new one in the file, the one before refused.
	if _, created, err := ensureAdminToken(st, dir, true); err != nil || !created {
		t.Fatalf("rotate: %v %v", created, err)
	}
	third := readToken(t, tok.Path)
	if third == second || authenticates(st, second) || !authenticates(st, third) {
		t.Errorf("after rotate: new %q, old still works %v", third, authenticates(st, second))
	}
	if _, err := os.Stat(tok.Path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
}

func TestEnsureAdminToken_RefusesBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"group readable", store.NewSecret(), 0o640, "has mode 0640, readable by others: run chmod 600"},
		{"world readable", store.NewSecret(), 0o644, "has mode 0644"},
		{"weak secret", "hunter2", 0o600, "does not hold an fcm token (fcm_ and 40 hex digits)"},
		{"truncated", store.NewSecret()[:30], 0o600, "does not hold an fcm token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, dir := openStore(t), t.TempDir()
			path := filepath.Join(dir, TokenFile)
			os.WriteFile(path, []byte(tc.content+"\n"), tc.mode)
			os.Chmod(path, tc.mode)
			_, _, err := ensureAdminToken(st, dir, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("got %v, want one line with %q", err, tc.want)
			}
			if authenticates(st, tc.content) {
				t.Error("the refused token authenticates")
			}
		})
	}
	t.Run("symlink", func(t *testing.T) {
		st, dir := openStore(t), t.TempDir()
		target := filepath.Join(t.TempDir(), "elsewhere")
		os.WriteFile(target, []byte(store.NewSecret()), 0o600)
		os.Symlink(target, filepath.Join(dir, TokenFile))
		if _, _, err := ensureAdminToken(st, dir, false); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("symlinked .token: %v", err)
		}
	})
	t.Run("planted tmp symlink is not followed", func(t *testing.T) {
		st, dir := openStore(t), t.TempDir()
		victim := filepath.Join(t.TempDir(), "victim")
		os.WriteFile(victim, []byte("precious\n"), 0o644)
		os.Symlink(victim, filepath.Join(dir, TokenFile+".tmp"))
		if _, _, err := ensureAdminToken(st, dir, false); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
			t.Errorf("the symlink's target was written: %q", b)
		}
	})
}

func TestCheckDataDir(t *testing.T) {
	ok := t.TempDir()
	os.Chmod(ok, 0o755)
	if err := checkDataDir(ok); err != nil {
		t.Errorf("0755 root dir: %v", err)
	}
	if err := checkDataDir(filepath.Join(ok, "missing")); err != nil {
		t.Errorf("missing dir: %v", err)
	}
	loose := t.TempDir()
	os.Chmod(loose, 0o777)
	if err := checkDataDir(loose); err == nil || !strings.Contains(err.Error(), "has mode 0777, writable by group or others: run chmod go-w") {
		t.Errorf("0777 dir: %v", err)
	}
	theirs := t.TempDir()
	os.Chown(theirs, 1000, 1000)
	if err := checkDataDir(theirs); err == nil || !strings.Contains(err.Error(), "is owned by uid 1000, not root") {
		t.Errorf("dir owned by uid 1000: %v", err)
	}
	planted := t.TempDir()
	os.Symlink("/", filepath.Join(planted, "vms"))
	if err := checkDataDir(planted); err == nil || !strings.Contains(err.Error(), "vms is not a directory") {
		t.Errorf("symlinked vms: %v", err)
	}
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tokenServer is an API server over a real admin token file.
func tokenServer(t *testing.T) (*httptest.Server, *store.Store, *AdminToken, *syncBuffer) {
	t.Helper()
	st, dir := openStore(t), t.TempDir()
	tok, _, err := ensureAdminToken(st, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	s := &Server{Store: st, VMs: &fakeVMs{}, AdminToken: tok, Version: "v-test", Hypervisor: "qemu", Log: slogTo(logs)}
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.Config = newHTTPServer(s.Handler())
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, st, tok, logs
}

// fcm token rotate's API: the admin gets a new token, written to .token; the
// old one is refused at once; a user token may not rotate.
func TestServer_RotateAdminToken(t *testing.T) {
	srv, st, tok, logs := tokenServer(t)
	ctx := context.Background()
	old := readToken(t, tok.Path)
	user := store.NewSecret()
	st.Update(func(tx *store.Tx) error { return tx.PutToken(user, &store.Token{ID: "alice"}) })

	alice := &client.Client{Host: srv.URL, Token: user}
	if _, err := alice.RotateAdminToken(ctx); err == nil || !strings.Contains(err.Error(), "only the admin token") {
		t.Errorf("a user rotating the admin token: %v, want forbidden", err)
	}
	var ae *api.Error
	if _, err := alice.RotateAdminToken(ctx); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Errorf("code %+v", ae)
	}

	admin := &client.Client{Host: srv.URL, Token: old}
	resp, err := admin.RotateAdminToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !store.ValidSecret(resp.Token) || resp.Token == old || resp.File != tok.Path || resp.Fingerprint != store.Fingerprint(resp.Token) {
		t.Errorf("rotate answered %+v", resp)
	}
	if got := readToken(t, tok.Path); got != resp.Token {
		t.Errorf(".token holds %q, want the new token", got)
	}
	if _, err := admin.ListVMs(ctx); err == nil || !strings.Contains(err.Error(), "invalid token") {
		t.Errorf("old admin token after rotation: %v, want 401", err)
	}
	if _, err := (&client.Client{Host: srv.URL, Token: resp.Token}).ListVMs(ctx); err != nil {
		t.Errorf("new admin token: %v", err)
	}
	if _, err := alice.ListVMs(ctx); err != nil {
		t.Errorf("user token after an admin rotation: %v", err)
	}
	log := logs.String()
	if !strings.Contains(log, "admin token rotated") || !strings.Contains(log, "new_token_fp="+resp.Fingerprint) {
		t.Errorf("log lacks the rotation:\n%s", log)
	}
	for _, secret := range []string{old, resp.Token, user} {
		if strings.Contains(log, secret) || strings.Contains(log, secret[4:]) {
			t.Errorf("a secret is in the log:\n%s", log)
		}
	}
}

// Every request is logged with who sent it: remote address, the client Caddy
// forwarded for (only believed from loopback), the token's id and fingerprint.
func TestServer_RequestLog(t *testing.T) {
	srv, _, tok, logs := tokenServer(t)
	secret := readToken(t, tok.Path)
	for _, h := range []map[string]string{
		{"Authorization": "Bearer " + secret, "X-Forwarded-For": "203.0.113.7"},
		{"Authorization": "Bearer fcm_0000000000000000000000000000000000000000"},
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/vms", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 log lines:\n%s", logs)
	}
	for _, want := range []string{"method=GET", "path=/v1/vms", "status=200", "remote=127.0.0.1:", "forwarded_for=203.0.113.7",
		"token=admin", "token_fp=" + store.Fingerprint(secret), "took="} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("log line lacks %s: %s", want, lines[0])
		}
	}
	if !strings.Contains(lines[1], "status=401") || !strings.Contains(lines[1], `token=""`) || !strings.Contains(lines[1], "token_fp=") {
		t.Errorf("a refused token's line: %s", lines[1])
	}
	if strings.Contains(logs.String(), secret[4:]) {
		t.Error("the secret is in the log")
	}
	// X-Forwarded-For from a non-loopback peer is not believed.
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "198.51.100.1:4000"
	req.Header.Set("X-Forwarded-For", "10.0.0.1")
	if ff := forwardedFor(req); ff != "" {
		t.Errorf("forwardedFor from a remote peer = %q", ff)
	}
}

// /health through Caddy (X-Forwarded-For) or from afar says only "ok"; on the
// host itself, or with a valid token, it tells the version.
func TestServer_HealthFingerprint(t *testing.T) {
	srv, _, tok, _ := tokenServer(t)
	secret := readToken(t, tok.Path)
	get := func(h map[string]string) string {
		req, _ := http.NewRequest("GET", srv.URL+"/health", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw bytes.Buffer
		raw.ReadFrom(resp.Body)
		return strings.TrimSpace(raw.String())
	}
	if got := get(nil); got != `{"status":"ok","version":"v-test","hypervisor":"qemu"}` {
		t.Errorf("local /health: %s", got)
	}
	if got := get(map[string]string{"X-Forwarded-For": "203.0.113.7"}); got != `{"status":"ok"}` {
		t.Errorf("/health through Caddy: %s", got)
	}
	if got := get(map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer fcm_nope"}); got != `{"status":"ok"}` {
		t.Errorf("/health through Caddy with a bad token: %s", got)
	}
	if got := get(map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer " + secret}); !strings.Contains(got, `"version":"v-test"`) {
		t.Errorf("/health through Caddy with the token: %s", got)
	}
	req := httptest.NewRequest("GET", "/health", nil)
	req.RemoteAddr = "198.51.100.1:4000"
	w := httptest.NewRecorder()
	(&Server{Version: "v-test", Store: nil}).health(w, req, nil)
	if got := strings.TrimSpace(w.Body.String()); got != `{"status":"ok"}` {
		t.Errorf("/health from a remote address: %s", got)
	}
}

func TestTokenRecipe(t *testing.T) {
	got := TokenRecipe("/var/lib/firecracker/.token")
	if got != `sudo install -m 600 -o "$USER" /var/lib/firecracker/.token ~/.fcm-token` {
		t.Errorf("recipe %q", got)
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
