package daemon

import (
	"net/http"
	"strings"
	"time"
)

// HTTP server timeouts. There is no server-wide ReadTimeout: it would also
// cut git pushes, console WebSockets and log streams, which read for as long
// as they last. Instead each API request's body must arrive within
// BodyReadTimeout (bodyDeadline), and an idle keep-alive connection is closed
// after IdleTimeout.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// BodyReadTimeout is how long an API request may take to send its body (a
// variable for tests).
var BodyReadTimeout = time.Minute

// newHTTPServer is the daemon's HTTP server with its timeouts.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout, IdleTimeout: IdleTimeout}
}

// streamingBody says which requests read their body for as long as they run
// (git's smart HTTP, the pre-receive hook's tree): no body deadline there.
func streamingBody(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/git/") || r.URL.Path == "/internal/push"
}

// bodyDeadline gives a request with a body BodyReadTimeout to send all of it
// (a client trickling bytes holds a connection no longer). net/http lifts the
// deadline itself once the body has been read to its end (it starts its
// background read of the connection with none), so a handler's long answer
// after that, a progress stream, is not cut.
func bodyDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && !streamingBody(r) {
			// An error is a writer with no connection (a test's recorder).
			http.NewResponseController(w).SetReadDeadline(time.Now().Add(BodyReadTimeout))
		}
		h.ServeHTTP(w, r)
	})
}
