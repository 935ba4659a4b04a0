package edge

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAdminAddress(t *testing.T) {
	for admin, want := range map[string]string{
		"unix//run/caddy/admin.sock":      "/run/caddy/admin.sock",
		"unix//run/caddy/admin.sock|0600": "/run/caddy/admin.sock",
		"http://127.0.0.1:2019":           "",
	} {
		path, ok := adminSocket(admin)
		if path != want || ok != (want != "") {
			t.Errorf("adminSocket(%q) = %q, %v", admin, path, ok)
		}
	}
	for _, good := range []string{"http://127.0.0.1:2019", "https://caddy.internal:2019", "unix//run/caddy/admin.sock", "unix//run/caddy/admin.sock|0600"} {
		if err := validateAdmin(good); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
	for bad, want := range map[string]string{
		"127.0.0.1:2019":                    "invalid Caddy admin address",
		"unix/run/caddy.sock":               "invalid Caddy admin socket",
		"unix//" + strings.Repeat("a", 120): "at most 107 bytes",
		"unix:///run/caddy/admin.sock":      "invalid Caddy admin address",
		"tcp/127.0.0.1:2019":                "invalid Caddy admin address",
	} {
		if err := validateAdmin(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", bad, err, want)
		}
	}
}

// caddyBin is the real Caddy the tests run: $FCM_CADDY, else caddy on PATH.
func caddyBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FCM_CADDY"); p != "" {
		return p
	}
	p, err := exec.LookPath("caddy")
	if err != nil {
		t.Fatal("caddy not found: set FCM_CADDY or put Caddy 2.7+ on PATH (make test-tools builds it)")
	}
	return p
}

// Caddy with its admin API on a unix socket (0600, as the quick start sets
// it): fcm's client configures it through the socket, the admin settings
// survive fcm's changes, and another local user cannot open the socket.
func TestCaddy_UnixAdminSocket(t *testing.T) {
	dir := t.TempDir()
	// Directories anyone may traverse: only the socket's own mode protects it.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "admin.sock")
	cfg := filepath.Join(dir, "caddy.json")
	os.WriteFile(cfg, []byte(`{"admin":{"listen":"unix/`+sock+`|0600"}}`), 0o644)
	cmd := exec.Command(caddyBin(t), "run", "--config", cfg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config")
	logf, _ := os.Create(filepath.Join(dir, "caddy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := NewCaddy("unix/" + sock + "|0600")
	for {
		if _, err := c.Get(ctx, "/config/"); err == nil {
			break
		} else if ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "caddy.log"))
			t.Fatalf("Caddy's admin socket never answered: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket %v, %v: want a socket, mode 0600", fi.Mode(), err)
	}

	// A server set through the socket (parents made on the way) serves.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	server := map[string]any{"listen": []any{addr}, "automatic_https": map[string]any{"disable": true},
		"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "static_response", "body": "set through the socket"}}}}}
	if err := c.Set(ctx, "/config/apps/http/servers/probe", server); err != nil {
		t.Fatal(err)
	}
	var body []byte
	for i := 0; i < 50; i++ {
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if string(body) != "set through the socket" {
		t.Errorf("the server set through the socket answered %q", body)
	}
	have, err := c.Get(ctx, "/config/apps/http/servers/probe")
	if err != nil || !same(have, server) {
		t.Errorf("read back %v, %v", have, err)
	}
	// Caddy still has its admin API on the socket (fcm's changes keep it).
	listen, err := c.Get(ctx, "/config/admin/listen")
	if err != nil || listen != "unix/"+sock+"|0600" {
		t.Errorf("admin listen after the change: %v, %v", listen, err)
	}
	if err := c.Delete(ctx, "/config/apps/http/servers/probe"); err != nil {
		t.Error(err)
	}

	// Another local user (nobody) cannot open the socket; root can.
	curl := func(uid uint32) ([]byte, error) {
		cmd := exec.Command("curl", "-sS", "--max-time", "5", "--unix-socket", sock, "http://127.0.0.1/config/admin")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		return cmd.CombinedOutput()
	}
	var v any
	if out, err := curl(0); err != nil || json.Unmarshal(out, &v) != nil {
		t.Errorf("root reaching the admin socket with curl: %v, %s", err, out)
	}
	if out, err := curl(65534); err == nil || json.Unmarshal(out, &v) == nil {
		t.Errorf("user nobody reached the admin socket: %v, %s", err, out)
	}
}
