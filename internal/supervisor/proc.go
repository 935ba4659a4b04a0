package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one process type of a release, kept running: restarted with backoff
// when it exits, until stopped.
type proc struct {
	typ, command, dir string
	version           int
	env               []string
	slot              *slot
	log               *appLog
	tail              *tailBuf

	mu       sync.Mutex
	pid      int
	state    string // starting, up, crashed, stopped
	restarts int
	since    time.Time
	lastExit string
	stopping bool
	wake     chan struct{} // closed by stop, to cut a backoff short
	done     chan struct{} // closed when the run loop has ended
	exits    chan string   // each exit's description, for the health check
}

// Process states as `fcm ps` shows them.
const (
	StateUp      = "up"
	StateCrashed = "crashed"
	StateStopped = "stopped"
)

func (p *proc) source() string { return "app[" + p.typ + ".1]" }

func (p *proc) run() {
	defer close(p.done)
	backoff := time.Second
	for {
		started := time.Now()
		err := p.once()
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		if stopping {
			return
		}
		msg := describeExit(err)
		select {
		case p.exits <- msg:
		default:
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second // it ran a good while: not a crash loop
		}
		p.mu.Lock()
		p.state, p.lastExit, p.restarts = StateCrashed, msg, p.restarts+1
		p.mu.Unlock()
		p.log.Printf("%s.1 %s; restarting in %s", p.typ, msg, backoff)
		select {
		case <-time.After(backoff):
		case <-p.wake:
			return
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (p *proc) once() error {
	cmd := appCmd(p.command, p.dir, p.env)
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := p.slot.start(cmd); err != nil {
		r.Close()
		w.Close()
		return err
	}
	w.Close()
	p.mu.Lock()
	p.pid, p.state, p.since = cmd.Process.Pid, StateUp, time.Now()
	p.mu.Unlock()
	p.log.Printf("%s.1 started v%d (pid %d): %s", p.typ, p.version, cmd.Process.Pid, p.command)
	out := make(chan struct{})
	go func() {
		p.log.copyLines(r, p.source(), p.tail.add)
		r.Close()
		close(out)
	}()
	err = cmd.Wait()
	// Daemonized children may keep the pipe open: don't wait on them for long.
	select {
	case <-out:
	case <-time.After(time.Second):
	}
	p.mu.Lock()
	p.pid = 0
	p.mu.Unlock()
	return err
}

func describeExit(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(unix.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("was killed by %v", ws.Signal())
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	if err == nil {
		return "exited with status 0"
	}
	return "failed to start: " + err.Error()
}

// stop ends the process group: SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	if !p.stopping {
		p.stopping = true
		close(p.wake)
	}
	pid := p.pid
	p.mu.Unlock()
	if pid > 0 {
		unix.Kill(-pid, unix.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		p.mu.Lock()
		pid = p.pid
		p.mu.Unlock()
		if pid > 0 {
			unix.Kill(-pid, unix.SIGKILL)
		}
		<-p.done
	}
	p.mu.Lock()
	p.state = StateStopped
	p.mu.Unlock()
}

// tailBuf keeps the last lines a release's processes printed, for the reason a
// deploy failed.
type tailBuf struct {
	mu    sync.Mutex
	lines []string
}

func (t *tailBuf) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > 20 {
		t.lines = t.lines[len(t.lines)-20:]
	}
}

func (t *tailBuf) get() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}
