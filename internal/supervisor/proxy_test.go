package supervisor

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func quietLog(t *testing.T) *appLog {
	l, err := openAppLog(filepath.Join(t.TempDir(), "app.log"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestProbe(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	defer ok.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer broken.Close()
	raw, _ := net.Listen("tcp", "127.0.0.1:0")
	defer raw.Close()
	go func() {
		for {
			c, err := raw.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-not-http\r\n"))
			c.Close()
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		addr string
		up   bool
		why  string
	}{
		{strings.TrimPrefix(ok.URL, "http://"), true, "HTTP 204"},
		{strings.TrimPrefix(broken.URL, "http://"), false, "it answered HTTP 503"},
		{raw.Addr().String(), true, "not HTTP"},
		{closedAddr, false, "nothing listening yet"},
	} {
		up, why := probe(context.Background(), tc.addr)
		if up != tc.up || !strings.Contains(why, tc.why) {
			t.Errorf("%s: up=%v %q, want up=%v %q", tc.addr, up, why, tc.up, tc.why)
		}
	}
}

// TestProxy_SwapUnderLoad: requests keep succeeding while the proxy moves from
// one backend to another and the old one is drained and closed.
func TestProxy_SwapUnderLoad(t *testing.T) {
	backend := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(5 * time.Millisecond)
			fmt.Fprintf(w, "%s %s", name, r.Header.Get("X-Forwarded-For"))
		}))
	}
	oldB, newB := backend("old"), backend("new")
	defer newB.Close()
	p := newProxy(quietLog(t))
	front := httptest.NewServer(p)
	defer front.Close()
	if body := get(t, front.URL); !strings.Contains(body, "is running") {
		t.Fatalf("before any release: %q, want the placeholder", body)
	}
	p.swap(p.newTarget(1, strings.TrimPrefix(oldB.URL, "http://")))
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get(front.URL)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
				if resp != nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	prev := p.swap(p.newTarget(2, strings.TrimPrefix(newB.URL, "http://")))
	p.drain(prev, 5*time.Second)
	oldB.Close() // the old release stops only after its requests finished
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 20 {
		t.Errorf("%d ok, %d failed while switching", ok.Load(), failed.Load())
	}
	if body := get(t, front.URL); !strings.HasPrefix(body, "new ") {
		t.Errorf("after the switch: %q", body)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestAppLog_Rotates(t *testing.T) {
	l := quietLog(t)
	line := strings.Repeat("x", 1000)
	for i := 0; i < maxLogBytes/1000+10; i++ {
		l.Line("app[web.1]", line)
	}
	fi, err := os.Stat(l.path + ".1")
	if err != nil || fi.Size() > maxLogBytes {
		t.Fatalf("rotated file: %v %v", fi, err)
	}
	cur, _ := os.ReadFile(l.path)
	if len(cur) == 0 || len(cur) >= maxLogBytes || !strings.Contains(string(cur), " app[web.1]: xxx") {
		t.Errorf("current log after rotation: %d bytes", len(cur))
	}
}
