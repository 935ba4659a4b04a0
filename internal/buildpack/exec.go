package buildpack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/release"
)

// indenter writes a tool's output under a step: 7 spaces before each line, as
// Heroku's buildpacks do, and notes when a step has been quiet for a while.
type indenter struct {
	mu      sync.Mutex
	w       io.Writer
	partial []byte
	last    time.Time
}

func newIndenter(w io.Writer) *indenter { return &indenter{w: w, last: time.Now()} }

func (in *indenter) Write(p []byte) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.last = time.Now()
	in.partial = append(in.partial, p...)
	for {
		i := bytes.IndexAny(in.partial, "\n\r")
		if i < 0 {
			break
		}
		line := in.partial[:i]
		in.partial = in.partial[i+1:]
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		fmt.Fprintf(in.w, "       %s\n", line)
	}
	return len(p), nil
}

func (in *indenter) flush() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(bytes.TrimSpace(in.partial)) > 0 {
		fmt.Fprintf(in.w, "       %s\n", in.partial)
	}
	in.partial = nil
}

// quietFor says how long nothing was written.
func (in *indenter) quietFor() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	return time.Since(in.last)
}

// KeepAlive is how long a step may be quiet before a sign of life is printed.
var KeepAlive = 20 * time.Second

// run runs a build command as the app user in its own process group, its output
// indented into out; a cancelled ctx kills the whole group.
func (b *Builder) run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if b.AsApp {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: release.UID, Gid: release.GID}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	in := newIndenter(b.Out)
	cmd.Stdout, cmd.Stderr = in, in
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			in.flush()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				return fmt.Errorf("%s failed (%v)", cmdline(name, args), err)
			}
			return nil
		case <-tick.C:
			if in.quietFor() >= KeepAlive {
				fmt.Fprintf(in, "... still running %s (%s)\n", cmdline(name, args), time.Since(start).Round(time.Second))
			}
		}
	}
}

func cmdline(name string, args []string) string {
	s := name
	for _, a := range args {
		s += " " + a
	}
	return s
}
