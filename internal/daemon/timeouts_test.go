package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func shortBodyTimeout(t *testing.T) {
	old := BodyReadTimeout
	BodyReadTimeout = 300 * time.Millisecond
	t.Cleanup(func() { BodyReadTimeout = old })
}

// A client trickling its body is answered 400 once BodyReadTimeout passes,
// instead of holding the connection.
func TestServer_SlowBodyTimesOut(t *testing.T) {
	shortBodyTimeout(t)
	srv, _, tok, _ := tokenServer(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na", readToken(t, tok.Path))
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !strings.Contains(string(body), `"code":"bad_request"`) || !strings.Contains(string(body), "timeout") {
		t.Errorf("stalled body: %d %s", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("answered after %s", took)
	}
}

// Once the body is in, the deadline is lifted: a handler that runs (and
// streams) for longer is not cut, and its request context stays alive.
func TestBodyDeadline_LiftedAfterBody(t *testing.T) {
	shortBodyTimeout(t)
	h := bodyDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		for i := 0; i < 4; i++ {
			time.Sleep(BodyReadTimeout / 2)
			fmt.Fprintf(w, "tick %d\n", i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprintf(w, "ctx err: %v\n", r.Context().Err())
	}))
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newHTTPServer(h)
	srv.Start()
	defer srv.Close()
	resp, err := http.Post(srv.URL, "application/json", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "tick 3\nctx err: <nil>") {
		t.Errorf("long answer after the body: %v %q", err, body)
	}
}

func TestHTTPServerTimeouts(t *testing.T) {
	s := newHTTPServer(http.NotFoundHandler())
	if s.IdleTimeout != 2*time.Minute || s.ReadHeaderTimeout == 0 || s.ReadTimeout != 0 || s.WriteTimeout != 0 {
		t.Errorf("idle %s, header %s, read %s, write %s: want idle 2m, a header timeout, and no whole-request timeouts (streams)",
			s.IdleTimeout, s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout)
	}
}
