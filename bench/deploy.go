package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// runDeployBench times git push deploys into one VM booted from the full image:
// push to the first answer with the new page, a Python build with and without
// its dependencies cached, a plain push to a bare repository for comparison,
// and requests failed while deploys switch releases under load.
func runDeployBench(w io.Writer, runs int) error {
	ctx := context.Background()
	fcmBin := os.Getenv("FCM_BIN")
	if fcmBin == "" {
		return fmt.Errorf("FCM_BIN must name the fcm binary the pre-receive hook runs (make bench sets it)")
	}
	dataDir, err := os.MkdirTemp("", "fcm-bench-deploy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	d, err := qemu.New(qemu.Options{Logger: quiet})
	if err != nil {
		return err
	}
	m, st, err := benchManagerImage(dataDir, d, nil, envOr("FCM_TEST_IMAGE_FULL", "/var/cache/fcm/test-image-full"))
	if err != nil {
		return err
	}
	v, err := m.Create(ctx, "bench", api.CreateVMRequest{Name: "deploy", MemoryMiB: 1024}, nil)
	if err != nil {
		return err
	}
	defer m.Destroy(ctx, v.Name, "")
	secret := store.NewSecret()
	if err := st.Update(func(tx *store.Tx) error {
		return tx.PutToken(secret, &store.Token{ID: "bench", Name: "bench", Admin: true})
	}); err != nil {
		return err
	}
	appURL := fmt.Sprintf("http://%s:%d/", v.IP, v.Port)
	svc := &deploy.Service{DataDir: dataDir, Store: st, Guests: m, HookBin: fcmBin, Log: quiet,
		URL: func(*store.VM) string { return appURL }}
	if err := svc.Prepare(ctx); err != nil {
		return err
	}
	srv := httptest.NewServer((&daemon.Server{Store: st, VMs: m, Guests: m, Log: quiet, Deploys: svc}).Handler())
	defer srv.Close()
	svc.DaemonURL = srv.URL
	remote := strings.Replace(srv.URL, "http://", "http://fcm:"+secret+"@", 1) + "/git/deploy.git"

	work, err := os.MkdirTemp("", "fcm-bench-app-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bare := filepath.Join(work, ".bare.git")
	if err := gitIn(work, "init", "-q", "-b", "main"); err != nil {
		return err
	}
	if err := gitIn(work, "init", "-q", "--bare", bare); err != nil {
		return err
	}
	commit := func(files map[string]string) error {
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(work, name), []byte(content), 0o644); err != nil {
				return err
			}
		}
		if err := gitIn(work, "add", "-A", "."); err != nil {
			return err
		}
		return gitIn(work, "commit", "-q", "-m", "bench")
	}
	push := func() (time.Duration, error) {
		start := time.Now()
		err := gitIn(work, "push", "-q", "-f", remote, "main")
		return time.Since(start), err
	}

	var live, pushed, plain []time.Duration
	for i := 0; i < runs; i++ {
		page := fmt.Sprintf("<h1>Hello World %d</h1>\n", i)
		if err := commit(map[string]string{"Procfile": "web: python3 -m http.server 3000\n", "index.html": page}); err != nil {
			return err
		}
		start := time.Now()
		took, err := push()
		if err != nil {
			return err
		}
		for !strings.Contains(get(appURL), page) {
			if time.Since(start) > time.Minute {
				return fmt.Errorf("the new page never answered")
			}
			time.Sleep(10 * time.Millisecond)
		}
		live = append(live, time.Since(start))
		pushed = append(pushed, took)
		start = time.Now()
		if err := gitIn(work, "push", "-q", "-f", bare, "main"); err != nil {
			return err
		}
		plain = append(plain, time.Since(start))
	}

	// Python: a new requirements.txt makes a virtualenv; an unchanged one reuses it.
	var cold, warm []time.Duration
	for i := 0; i < runs; i++ {
		app := map[string]string{"Procfile": "web: python -m http.server 3000\n", "index.html": fmt.Sprintf("python %d\n", i),
			"requirements.txt": fmt.Sprintf("# bench run %d: no packages (a new file: a new virtualenv)\n", i)}
		if err := commit(app); err != nil {
			return err
		}
		took, err := push()
		if err != nil {
			return err
		}
		cold = append(cold, took)
		app["index.html"] = fmt.Sprintf("python %d again\n", i)
		delete(app, "requirements.txt")
		if err := commit(app); err != nil {
			return err
		}
		if took, err = push(); err != nil {
			return err
		}
		warm = append(warm, took)
	}

	// Requests while three deploys switch releases.
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const concurrency = 4
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(appURL)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode >= 500 {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 3; i++ {
		if err := commit(map[string]string{"index.html": fmt.Sprintf("under load %d\n", i)}); err != nil {
			return err
		}
		if _, err := push(); err != nil {
			return err
		}
	}
	time.Sleep(2 * time.Second) // old releases stop in the background
	close(stop)
	wg.Wait()

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "DEPLOY (qemu %s, full image, %d runs)\tMEDIAN\tMAX\n", d.Accel(), runs)
	row := func(name string, ds []time.Duration) {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, percentile(ds, 0.5).Round(time.Millisecond), percentile(ds, 1).Round(time.Millisecond))
	}
	row("git push -> first 200 with the new page (static, Procfile web)", live)
	row("  git push returned (build, start, health check, switch)", pushed)
	row("git push to a bare repository on this host", plain)
	row("python: push with a new requirements.txt (virtualenv + pip)", cold)
	row("python: push with requirements.txt unchanged (cached)", warm)
	over := make([]time.Duration, len(pushed))
	for i := range pushed {
		over[i] = pushed[i] - plain[i]
	}
	row("fcm's push over a plain push (static app)", over)
	fmt.Fprintf(tw, "\nREQUESTS DURING 3 DEPLOYS\tCONCURRENCY %d\t%d ok, %d failed\n", concurrency, ok.Load(), failed.Load())
	return tw.Flush()
}

func gitIn(dir string, args ...string) error {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.com",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.com", "GIT_TERMINAL_PROMPT=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func get(url string) string {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
