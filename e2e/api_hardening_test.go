package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fcmhost/fcm/internal/image"
)

// refusedDaemon runs `fcm daemon` on dataDir expecting it to refuse to start;
// it returns its output.
func refusedDaemon(t *testing.T, dataDir string) string {
	t.Helper()
	cmd := exec.Command(os.Getenv("FCM_BIN"), "daemon", "--data-dir", dataDir, "--listen", daemonListen,
		"--hypervisor", "qemu", "--bridge", daemonBridge, "--subnet", daemonSubnet, "--caddy-admin", "off",
		"--kernel", filepath.Join(imageDir, image.KernelFile), "--initrd", filepath.Join(imageDir, image.InitrdFile),
		"--rootfs", filepath.Join(imageDir, image.RootfsFile))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the daemon started:\n%s", out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 {
		t.Errorf("want one line, got:\n%s", out)
	}
	return string(out)
}

// TestAPIHardening: the admin token rotates (fcm token rotate against the
// running daemon, fcm daemon --rotate-admin-token at start, or .token replaced
// by hand) and the old one is refused at once; token files and data dirs
// others could read or write are refused in one line; /health tells its
// version only on the host; fcm as process 1 outside a VM is the CLI.
func TestAPIHardening(t *testing.T) {
	dataDir := shortTempDir(t)
	d := startDaemon(t, dataDir)
	first := d.token()
	if log := d.log(); !strings.Contains(log, `sudo install -m 600 -o "$USER" `+filepath.Join(dataDir, ".token")+" ~/.fcm-token") {
		t.Errorf("token recipe not printed:\n%s", log)
	}
	host := "FCM_HOST=http://" + daemonListen
	work := t.TempDir()

	// The CLI refuses a token file others can read, before sending anything.
	home := t.TempDir()
	tokenFile := filepath.Join(home, ".fcm-token")
	os.WriteFile(tokenFile, []byte(first+"\n"), 0o644)
	os.Chmod(tokenFile, 0o644)
	out, code := runFCM(t, work, []string{host, "HOME=" + home}, "ls")
	if code == 0 || strings.TrimSpace(out) != "fcm: ~/.fcm-token has mode 0644: run chmod 600 ~/.fcm-token" {
		t.Errorf("ls with a 0644 token file: exit %d, %q", code, out)
	}
	os.Chmod(tokenFile, 0o600)
	if out, code := runFCM(t, work, []string{host, "HOME=" + home}, "ls"); code != 0 {
		t.Fatalf("ls with the 0600 token file: exit %d, %s", code, out)
	}

	// fcm token rotate: a new token in ~/.fcm-token and the daemon's .token;
	// the old one refused at once.
	out, code = runFCM(t, work, []string{host, "HOME=" + home}, "token", "rotate")
	if code != 0 || !strings.Contains(out, "written to "+tokenFile) {
		t.Fatalf("token rotate: exit %d, %s", code, out)
	}
	second := d.token()
	if b, _ := os.ReadFile(tokenFile); strings.TrimSpace(string(b)) != second || second == first {
		t.Errorf("~/.fcm-token %q, daemon's .token %q (first %q)", b, second, first)
	}
	if fi, _ := os.Stat(filepath.Join(dataDir, ".token")); fi.Mode().Perm() != 0o600 {
		t.Errorf(".token mode %#o after rotation", fi.Mode().Perm())
	}
	out, code = runFCM(t, work, []string{host, "FCM_TOKEN=" + first}, "ls")
	if code == 0 || !strings.Contains(out, "invalid token") {
		t.Errorf("the old token after rotation: exit %d, %s", code, out)
	}
	if out, code := runFCM(t, work, []string{host, "FCM_TOKEN=" + second}, "ls"); code != 0 {
		t.Errorf("the new token: exit %d, %s", code, out)
	}
	log := d.log()
	if !strings.Contains(log, "admin token rotated") || !strings.Contains(log, "path=/v1/tokens/admin/rotate status=200") {
		t.Errorf("the rotation is not in the daemon's log:\n%s", log)
	}
	for _, secret := range []string{first, second} {
		if strings.Contains(log, secret[4:]) {
			t.Errorf("a token is in the daemon's log:\n%s", log)
		}
	}

	// /health: version on the host, only "ok" for a request through a proxy.
	h := func(xff string) string {
		req, _ := http.NewRequest("GET", "http://"+daemonListen+"/health", nil)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := make([]byte, 512)
		n, _ := resp.Body.Read(b)
		return strings.TrimSpace(string(b[:n]))
	}
	if got := h(""); !strings.Contains(got, `"version"`) {
		t.Errorf("/health on the host: %s", got)
	}
	if got := h("203.0.113.9"); got != `{"status":"ok"}` {
		t.Errorf("/health through a proxy: %s", got)
	}

	// fcm daemon --rotate-admin-token: a new token at start, the one before refused.
	d.stop(syscall.SIGTERM)
	d = startDaemonHV(t, "qemu", dataDir, "--rotate-admin-token")
	third := d.token()
	if third == second || !strings.Contains(d.log(), "New admin token (the old one no longer works) written to") {
		t.Errorf("--rotate-admin-token: token unchanged or not said:\n%s", d.log())
	}
	if out, code := runFCM(t, work, []string{host, "FCM_TOKEN=" + second}, "ls"); code == 0 || !strings.Contains(out, "invalid token") {
		t.Errorf("the token before --rotate-admin-token: exit %d, %s", code, out)
	}
	if out, code := runFCM(t, work, []string{host, "FCM_TOKEN=" + third}, "ls"); code != 0 {
		t.Errorf("the token after --rotate-admin-token: exit %d, %s", code, out)
	}

	// .token replaced by hand (after a leak): the next start revokes the old one.
	d.stop(syscall.SIGTERM)
	fourth := "fcm_" + strings.Repeat("ab", 20)
	os.WriteFile(filepath.Join(dataDir, ".token"), []byte(fourth+"\n"), 0o600)
	d = startDaemon(t, dataDir)
	if out, code := runFCM(t, work, []string{host, "FCM_TOKEN=" + third}, "ls"); code == 0 || !strings.Contains(out, "invalid token") {
		t.Errorf("the token before .token was replaced: exit %d, %s", code, out)
	}
	if out, code := runFCM(t, work, []string{host, "FCM_TOKEN=" + fourth}, "ls"); code != 0 {
		t.Errorf("the hand-written token: exit %d, %s", code, out)
	}
	d.stop(syscall.SIGTERM)

	// Files others could read or write: the daemon refuses to start.
	tokenPath := filepath.Join(dataDir, ".token")
	os.Chmod(tokenPath, 0o644)
	if out := refusedDaemon(t, dataDir); !strings.Contains(out, "has mode 0644, readable by others: run chmod 600 "+tokenPath) {
		t.Errorf("0644 .token: %s", out)
	}
	os.Chmod(tokenPath, 0o600)
	os.WriteFile(tokenPath, []byte("hunter2\n"), 0o600)
	if out := refusedDaemon(t, dataDir); !strings.Contains(out, "does not hold an fcm token") {
		t.Errorf("weak .token: %s", out)
	}
	os.WriteFile(tokenPath, []byte(fourth+"\n"), 0o600)
	os.Chmod(dataDir, 0o777)
	if out := refusedDaemon(t, dataDir); !strings.Contains(out, "writable by group or others: run chmod go-w "+dataDir) {
		t.Errorf("0777 data dir: %s", out)
	}
	os.Chmod(dataDir, 0o700)

	// Process 1 outside a VM (unshare --pid) is the CLI, not the guest init.
	out2, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", os.Getenv("FCM_BIN"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out2), "fcm ") {
		t.Errorf("fcm version as process 1: %v, %q", err, out2)
	}
}
