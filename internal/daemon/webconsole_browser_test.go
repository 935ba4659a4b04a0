package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/console"
)

// fakeSession stands in for a VM's session behind the attach WebSocket (the
// e2e test has the real one): it echoes what it is sent, says "dropped" and
// cuts the connection on "drop\r", and records what the page asked for.
type fakeSession struct {
	mu       sync.Mutex
	created  []string     // ids the page POSTed
	attaches []url.Values // each attach's query
	sentThen []int64      // the stream's length at each attach
	resizes  []console.Control
	sent     int64 // bytes sent in the stream so far
}

func (f *fakeSession) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/alice-vm/sessions", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		list := `{"sessions":[]}`
		if len(f.created) > 0 {
			list = `{"sessions":[{"id":"` + f.created[0] + `","vm":"alice-vm"}]}`
		}
		w.Write([]byte(list))
	})
	mux.HandleFunc("POST /v1/vms/alice-vm/sessions", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ ID string }
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.created = append(f.created, req.ID)
		f.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{}`))
	})
	mux.HandleFunc("GET /v1/vms/alice-vm/sessions/{id}/attach", func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		ctx := r.Context()
		f.mu.Lock()
		f.attaches = append(f.attaches, r.URL.Query())
		f.sentThen = append(f.sentThen, f.sent)
		hello, _ := json.Marshal(console.Control{Type: "hello", Stream: "s1", Offset: f.sent})
		f.mu.Unlock()
		ws.Write(ctx, websocket.MessageText, hello)
		out := func(s string) {
			f.mu.Lock()
			f.sent += int64(len(s))
			f.mu.Unlock()
			ws.Write(ctx, websocket.MessageBinary, []byte(s))
		}
		out("$ ")
		var line []byte
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				if c, ok := console.ParseControl(data); ok && c.Type == "resize" {
					f.mu.Lock()
					f.resizes = append(f.resizes, c)
					f.mu.Unlock()
				}
				continue
			}
			line = append(line, data...)
			if !strings.HasSuffix(string(line), "\r") {
				out(string(data))
				continue
			}
			got := strings.TrimSuffix(string(line), "\r")
			line = nil
			if got == "drop" {
				out("\r\ndropped\r\n")
				return // the connection ends without a close: as a network drop
			}
			out("\r\nyou typed: " + got + "\r\n$ ")
		}
	})
	return mux
}

// TestConsolePage_Browser: in Chromium, the page makes its session, attaches
// at the terminal's size, sends keys and shows output, follows the window,
// and after a dropped connection reconnects where its output stopped.
func TestConsolePage_Browser(t *testing.T) {
	p := newPeople(t)
	f := &fakeSession{}
	mux := http.NewServeMux()
	mux.Handle("/", routeServer(t, p)) // the page and its files, from the daemon
	mux.Handle("/v1/vms/alice-vm/sessions", f.handler(t))
	mux.Handle("/v1/vms/alice-vm/sessions/", f.handler(t))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b := browsertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tab, cancelTab := b.Tab(ctx)
	defer cancelTab()
	httpOnly := true
	if _, err := chromedp.Call(tab, network.SetCookie, network.SetCookieParams{Name: auth.SessionCookie, Value: p.alice, URL: srv.URL, HTTPOnly: &httpOnly}); err != nil {
		t.Fatal(err)
	}
	page, err := b.Open(ctx, srv.URL+"/vms/alice-vm/console")
	if err != nil || page.Status != http.StatusOK {
		t.Fatalf("open the console: %v (%d): %s", err, page.Status, page.Text)
	}
	eval := func(expr string) string {
		t.Helper()
		tab, cancel := b.Tab(ctx)
		defer cancel()
		s, err := chromedp.Run(tab, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return s
	}
	const screen = `(() => { const b = fcmTerm.buffer.active, out = [];
		for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
		return document.getElementById("status").textContent + "\n" + out.join("\n"); })()`
	waitFor := func(want string) string {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			s := eval(screen)
			if strings.Contains(s, want) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page never showed %q:\n%s", want, s)
			}
		}
	}
	typeLine := func(s string) {
		t.Helper()
		tab, cancel := b.Tab(ctx)
		defer cancel()
		for _, r := range s + "\r" {
			down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: string(r), Text: string(r)}
			if r == '\r' {
				down.Key, down.Code, down.WindowsVirtualKeyCode = "Enter", "Enter", 13
			}
			up := down
			up.Type, up.Text = input.DispatchKeyEventTypeKeyUp, ""
			for _, e := range []input.DispatchKeyEventParams{down, up} {
				if _, err := chromedp.Call(tab, input.DispatchKeyEvent, e); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	size := func() (int, int) {
		s := strings.Fields(eval(`fcmTerm.cols + " " + fcmTerm.rows`))
		c, _ := strconv.Atoi(s[0])
		r, _ := strconv.Atoi(s[1])
		return c, r
	}

	waitFor("connected\n$ ")
	typeLine("echo $((6*7))")
	waitFor("you typed: echo $((6*7))")
	f.mu.Lock()
	created, first := f.created, f.attaches[0]
	f.mu.Unlock()
	cols, rows := size()
	if len(created) != 1 || created[0] != "web-alice-vm" {
		t.Errorf("sessions the page made: %q, want [web-alice-vm]", created)
	}
	if first.Get("cols") != strconv.Itoa(cols) || first.Get("rows") != strconv.Itoa(rows) || first.Has("stream") {
		t.Errorf("first attach %v, want the terminal's %dx%d and no stream", first, cols, rows)
	}

	// The window shrinks: the terminal and then the session follow.
	if err := chromedp.Do(tab, chromedp.EmulateViewport(500, 300)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, r := size()
		f.mu.Lock()
		var last console.Control
		if n := len(f.resizes); n > 0 {
			last = f.resizes[n-1]
		}
		f.mu.Unlock()
		if c < cols && r < rows && last.Cols == c && last.Rows == r {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the window shrank the terminal is %dx%d (was %dx%d), the session was last told %dx%d", c, r, cols, rows, last.Cols, last.Rows)
		}
	}

	// A dropped connection comes back by itself, where its output stopped,
	// with what was on the screen still there.
	typeLine("drop")
	waitFor("dropped")
	s := waitFor("connected\n")
	f.mu.Lock()
	attaches, sentThen := f.attaches, f.sentThen
	f.mu.Unlock()
	if len(attaches) != 2 {
		t.Fatalf("%d attaches after the drop, want 2", len(attaches))
	}
	if again := attaches[1]; again.Get("stream") != "s1" || again.Get("since") != strconv.FormatInt(sentThen[1], 10) {
		t.Errorf("reattach %v, want stream s1 since %d (all it had been sent)", again, sentThen[1])
	}
	if !strings.Contains(s, "you typed: echo $((6*7))") {
		t.Errorf("the screen after reconnecting lost what it showed:\n%s", s)
	}
	typeLine("still here")
	waitFor("you typed: still here")
}
