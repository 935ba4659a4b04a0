package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on what a guest can make the daemon hold: the guest is untrusted, and
// what it prints on a release path reaches the host's memory and disk.
var (
	// MaxTranscript caps each release's transcript on the host; what follows
	// is dropped, with a line saying so.
	MaxTranscript int64 = 4 << 20
	// DefaultMaxOutput caps what one release may stream from the guest
	// (Service.MaxOutput): a release printing more is stopped and fails.
	DefaultMaxOutput int64 = 256 << 20
	// DefaultBuildTimeout bounds one release (Service.BuildTimeout): build,
	// release command, switch.
	DefaultBuildTimeout = 30 * time.Minute
	// WriteTimeout bounds each write to a client streaming a release's output,
	// logs or a command's: a client that stops reading is cut off, and what
	// it held (a lock, a guest session) is let go.
	WriteTimeout = time.Minute
)

func (s *Service) maxOutput() int64 {
	if s.MaxOutput > 0 {
		return s.MaxOutput
	}
	return DefaultMaxOutput
}

func (s *Service) buildTimeout() time.Duration {
	if s.BuildTimeout > 0 {
		return s.BuildTimeout
	}
	return DefaultBuildTimeout
}

// ErrOutputTooLarge is wrapped by the error of a release that printed more than MaxOutput.
var ErrOutputTooLarge = errors.New("output too large")

// lineWriter remembers the last " !" line written, the reason a deploy failed,
// and when anything was last written; it copies everything into the
// release's transcript once it has one.
type lineWriter struct {
	w      io.Writer
	mu     sync.Mutex
	reason string
	last   time.Time
	tee    io.Writer // the release's transcript on the host, once it has one
}

// record copies what follows into the release's transcript; the returned func
// closes it.
func (l *lineWriter) record(s *Service, vmID string, version int) func() {
	f, err := s.createOutput(vmID, version)
	if err != nil {
		s.Log.Warn("release output", "vm", vmID, "version", version, "err", err)
		return func() {}
	}
	t := &capped{w: f, max: MaxTranscript}
	l.mu.Lock()
	l.tee = t
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.tee = nil
		l.mu.Unlock()
		f.Close()
	}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.last = time.Now()
	for _, line := range strings.Split(string(p), "\n") {
		if r, ok := strings.CutPrefix(line, " !     "); ok && !strings.HasPrefix(r, "The app's last lines") {
			l.reason = strings.TrimSpace(r)
			if len(l.reason) > 1024 {
				l.reason = l.reason[:1024]
			}
		}
	}
	if l.tee != nil {
		l.tee.Write(p)
	}
	l.mu.Unlock()
	return l.w.Write(p)
}

// keepAlive prints a line whenever nothing was written for every; the
// returned func stops it.
func (l *lineWriter) keepAlive(ctx context.Context, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	start := time.Now()
	l.mu.Lock()
	l.last = start
	l.mu.Unlock()
	go func() {
		tick := time.NewTicker(every / 4)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l.mu.Lock()
			quiet := time.Since(l.last)
			l.mu.Unlock()
			if quiet >= every {
				fmt.Fprintf(l, "       ... still working (%s)\n", time.Since(start).Round(time.Second))
			}
		}
	}()
	return cancel
}

// capped writes to w until max bytes, then one line saying the rest was
// dropped; it never fails, so what tees into it goes on.
type capped struct {
	w       io.Writer
	max, n  int64
	dropped bool
}

func (c *capped) Write(p []byte) (int, error) {
	if left := c.max - c.n; left > 0 {
		k := min(int64(len(p)), left)
		c.w.Write(p[:k])
		c.n += k
		if k == int64(len(p)) {
			return len(p), nil
		}
	}
	if !c.dropped {
		c.dropped = true
		fmt.Fprintf(c.w, "\n !     (output truncated: the host keeps the first %d MiB of a release's output)\n", c.max>>20)
	}
	return len(p), nil
}

// limited passes writes on to w until max bytes have gone through, then
// fails every write with ErrOutputTooLarge and calls over once.
type limited struct {
	w    io.Writer
	max  int64
	n    int64
	over func()
	mu   sync.Mutex
}

func (l *limited) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.n += int64(len(p))
	n := l.n
	l.mu.Unlock()
	if n > l.max {
		if n-int64(len(p)) <= l.max {
			l.over()
		}
		return 0, ErrOutputTooLarge
	}
	return l.w.Write(p)
}

// tail keeps the last size bytes written to it.
type tail struct {
	size int
	buf  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.size; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.buf) }

// aliveWriter calls gone once a write fails: the reader went away.
type aliveWriter struct {
	w    io.Writer
	gone func()
}

func (a *aliveWriter) Write(p []byte) (int, error) {
	n, err := a.w.Write(p)
	if err != nil {
		a.gone()
	}
	return n, err
}

// ClientWriter writes to an HTTP response as it comes (flushed), each write
// within WriteTimeout: a client that stops reading gets its write failed
// instead of holding the writer forever.
type ClientWriter struct{ W http.ResponseWriter }

func (c ClientWriter) Write(p []byte) (int, error) {
	rc := http.NewResponseController(c.W)
	rc.SetWriteDeadline(time.Now().Add(WriteTimeout))
	n, err := c.W.Write(p)
	if err == nil {
		err = rc.Flush()
	}
	// No deadline between writes: a quiet command is not a stalled client.
	rc.SetWriteDeadline(time.Time{})
	return n, err
}

// keepOutputs is how many release transcripts the host keeps per app (each at
// most MaxTranscript).
const keepOutputs = 20

func (s *Service) outputDir(vmID string) string { return filepath.Join(s.appDir(vmID), "releases") }

// createOutput makes the transcript file of a release, dropping the oldest
// beyond keepOutputs.
func (s *Service) createOutput(vmID string, version int) (*os.File, error) {
	dir := s.outputDir(vmID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if old := version - keepOutputs; old > 0 {
		matches, _ := filepath.Glob(filepath.Join(dir, "v*.log"))
		for _, m := range matches {
			var n int
			if _, err := fmt.Sscanf(filepath.Base(m), "v%d.log", &n); err == nil && n <= old {
				os.Remove(m)
			}
		}
	}
	return os.OpenFile(filepath.Join(dir, fmt.Sprintf("v%d.log", version)), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
}
