package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
)

// TestWeb_DownloadClient: the status page links the client for each
// platform; the Linux x86_64 one, downloaded through that link, runs fcm
// version and fcm ls against the daemon that served it.
func TestWeb_DownloadClient(t *testing.T) {
	releases := os.Getenv("FCM_RELEASES")
	if releases == "" {
		t.Fatal("set FCM_RELEASES=bin/releases (run make release first)")
	}
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, "qemu", dataDir, "--releases-dir", releases)
	b := browsertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := "http://" + daemonListen
	if _, err := b.Open(ctx, base+"/"); err != nil {
		t.Fatal(err)
	}
	href, err := tabRun(b, chromedp.Evaluate[string](`document.getElementById("download-linux-amd64").href`))
	if err != nil {
		t.Fatalf("the status page's download link: %v", err)
	}
	install, err := tabRun(b, chromedp.Text(chromedp.CSS("#install")))
	if err != nil {
		t.Fatal(err)
	}
	if href != base+"/releases/fcm-linux-amd64.tar.gz" || install != "curl -sL "+base+"/install.sh | sh" {
		t.Fatalf("the page links %q and says %q", href, install)
	}
	resp, err := http.Get(href)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/gzip" {
		t.Fatalf("GET %s: %d %s", href, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	bin := filepath.Join(t.TempDir(), "fcm")
	untarOne(t, resp.Body, "fcm", bin)
	out, err := exec.Command(bin, "version").CombinedOutput()
	want, _ := exec.Command(os.Getenv("FCM_BIN"), "version").Output()
	if err != nil || string(out) != string(want) {
		t.Fatalf("the downloaded fcm version: %q (%v), the daemon's build says %q", out, err, want)
	}
	ls := exec.Command(bin, "ls")
	ls.Env = append(withoutFCMEnv(), "HOME="+t.TempDir(), "FCM_HOST="+base, "FCM_TOKEN="+d.token())
	out, err = ls.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No VMs. Create one with: fcm create") {
		t.Fatalf("the downloaded fcm ls: %v:\n%s", err, out)
	}
	t.Logf("downloaded %s: %s; fcm ls: %s", href, strings.TrimSpace(string(want)), strings.TrimSpace(string(out)))
}

// untarOne writes the one file named name of a .tar.gz stream to dst.
func untarOne(t *testing.T, r io.Reader, name, dst string) {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var found bool
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != name || found {
			t.Fatalf("the tarball holds %q; want only %q", h.Name, name)
		}
		found = true
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode)&0o777)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if !found {
		t.Fatalf("no %s in the tarball", name)
	}
}
