// Package console manages persistent console sessions: each is a tmux session
// inside the VM, so it outlives any connection and the daemon itself. This file
// names, lists, makes and ends them over the daemon's SSH connection to the VM.
package console

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// CommandTimeout bounds each tmux command that lists, makes or ends sessions.
const CommandTimeout = 15 * time.Second

// Runner runs a shell command in a VM (guest.Client).
type Runner interface {
	Run(ctx context.Context, cmd string) ([]byte, error)
}

// Session is one tmux session in a VM.
type Session struct {
	ID       string
	Created  time.Time
	Attached int // clients attached inside tmux
}

var words = []string{
	"brook", "fern", "moss", "pine", "cedar", "river", "meadow", "willow", "stone", "cloud",
	"maple", "aspen", "birch", "reed", "tide", "dune", "grove", "ridge", "creek", "lake",
	"heath", "glade", "marsh", "bay", "cove", "peak", "vale", "frost", "ember", "spring",
}

var idRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ErrInvalidID is wrapped by Validate's errors.
var ErrInvalidID = errors.New("invalid session id")

// Validate accepts ids like brook, fern-2 and web-cosmic-nova: lowercase letters,
// digits and hyphens, starting with a letter; they reach a tmux command line.
func Validate(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w %q: use lowercase letters, digits and hyphens, starting with a letter", ErrInvalidID, id)
	}
	return nil
}

// NewID returns the first nature word not in taken, then word-2, word-3...
func NewID(taken map[string]bool) string {
	for n := 1; ; n++ {
		for _, w := range words {
			id := w
			if n > 1 {
				id = w + "-" + strconv.Itoa(n)
			}
			if !taken[id] {
				return id
			}
		}
	}
}

// List returns the VM's sessions, oldest first. No tmux server is no sessions.
func List(ctx context.Context, r Runner) ([]Session, error) {
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	out, err := r.Run(ctx, `tmux list-sessions -F '#{session_name} #{session_created} #{session_attached}' 2>&1 || true`)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return parseList(string(out))
}

func parseList(out string) ([]Session, error) {
	var sessions []Session
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" || strings.HasPrefix(line, "no server running") || strings.HasPrefix(line, "error connecting") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("list sessions: unexpected tmux output %q", clip(line))
		}
		created, err1 := strconv.ParseInt(f[1], 10, 64)
		attached, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("list sessions: unexpected tmux output %q", clip(line))
		}
		if Validate(f[0]) != nil {
			continue // not one of ours, and not fit to print or to reach a command line
		}
		sessions = append(sessions, Session{ID: f[0], Created: time.Unix(created, 0).UTC(), Attached: attached})
	}
	sort.SliceStable(sessions, func(i, j int) bool { return sessions[i].Created.Before(sessions[j].Created) })
	return sessions, nil
}

// Create starts a detached session id (a login shell in root's home).
func Create(ctx context.Context, r Runner, id string) error {
	if err := Validate(id); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	if _, err := r.Run(ctx, "cd ~ && tmux new-session -d -s "+id); err != nil {
		return fmt.Errorf("create session %s: %w", id, err)
	}
	return nil
}

// ErrNoSession says the VM has no session with that id.
var ErrNoSession = errors.New("no such session")

// Kill ends session id and the programs in it.
func Kill(ctx context.Context, r Runner, id string) error {
	if err := Validate(id); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	out, err := r.Run(ctx, "tmux kill-session -t ="+id+" 2>&1; echo rc=$?")
	if err != nil {
		return fmt.Errorf("kill session %s: %w", id, err)
	}
	if !strings.Contains(string(out), "rc=0") {
		return fmt.Errorf("session %q: %w", id, ErrNoSession)
	}
	return nil
}

// clip shortens guest text for an error message (which quotes it: at most 4
// bytes for each of these).
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
