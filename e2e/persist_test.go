package e2e

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConsole_Persistence: a console session outlives its clients and the
// daemon. vi's screen comes back on reattach, two clients see the same output,
// a killed client loses nothing, and a client attached across a daemon restart
// reconnects by itself.
func TestConsole_Persistence(t *testing.T) {
	d, work := daemonWithVM(t, "term2")
	env, h, bin := d.terminal(t)

	// vi on a file with known text; detach; the session is listed.
	h.run("a", work, env, bin+" console")
	h.waitFor("a", "root@term2")
	h.keys("a", "X=kept; printf 'alpha line\\nthe quick brown fox\\n' > f.txt && vi f.txt", "Enter")
	h.waitFor("a", "the quick brown fox")
	h.keys("a", "C-]")
	h.waitFor("a", "Detached from brook")
	d.waitCLI(work, `(?m)^brook\s+term2\s+.*\s0$`, "console", "ls") // listed, no one attached

	// Reattach: vi's screen is drawn again, as it was.
	h.run("b", work, env, bin+" console term2 -s brook")
	h.waitFor("b", "Session: brook")
	screen := h.waitFor("b", "the quick brown fox")
	if !strings.Contains(screen, "alpha line") || !strings.Contains(screen, "~") {
		t.Errorf("vi's screen not restored on reattach:\n%s", screen)
	}
	h.keys("b", "Escape", ":q", "Enter")
	h.waitFor("b", "vi f.txt")
	h.keys("b", "clear; echo before-$((2*50))", "Enter")
	h.waitFor("b", "before-100")

	// A second client on the same session, by the seed's alias: both see a
	// command's output, and the session counts both.
	h.run("c", work, env, bin+" attach term2 brook")
	h.waitFor("c", "Session: brook")
	h.waitFor("c", "before-100") // the screen as it is, drawn for the newcomer
	h.keys("b", "echo two-$((3*5))", "Enter")
	h.waitFor("b", "two-15")
	h.waitFor("c", "two-15")
	d.waitCLI(work, `(?m)^brook\s+term2\s+.*\s2$`, "sessions", "term2") // two attached

	// Kill a client outright (a laptop lid closing): the others carry on and a
	// new client finds the shell's state intact.
	h.kill("c", syscall.SIGKILL)
	h.waitFor("c", "[fcm exited] 137")
	h.keys("b", "echo still-$X", "Enter")
	h.waitFor("b", "still-kept")
	h.keys("b", "C-]")
	h.waitFor("b", "Detached from brook")
	h.run("d", work, env, bin+" console term2 -s brook")
	h.waitFor("d", "Session: brook")
	h.keys("d", "echo again-$X", "Enter")
	h.waitFor("d", "again-kept")

	// Restart the daemon under an attached client: it says so, reconnects by
	// itself, and the session goes on.
	d.stop(syscall.SIGTERM)
	h.waitFor("d", "Connection lost")
	d = startDaemon(t, d.dataDir)
	h.waitFor("d", "Reconnected.")
	h.keys("d", "echo back-$((2*21))-$X", "Enter")
	h.waitFor("d", "back-42-kept")
	if out := d.mustCLI(work, "console", "ls"); !strings.Contains(out, "brook") {
		t.Errorf("console ls after a daemon restart:\n%s", out)
	}
	h.keys("d", "exit", "Enter")
	h.waitFor("d", "Session brook ended.")
	d.mustCLI(work, "destroy", "term2")
}

// waitCLI runs the CLI until its output matches pattern (attach counts settle
// as tmux clients come and go).
func (d *daemonProc) waitCLI(dir, pattern string, args ...string) {
	d.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := d.mustCLI(dir, args...)
		if re.MatchString(out) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("fcm %s never matched %s:\n%s", strings.Join(args, " "), pattern, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// kill sends sig to the program a window runs (the child of its shell).
func (h *hostTmux) kill(name string, sig syscall.Signal) {
	h.t.Helper()
	pane := strings.TrimSpace(h.tmux("list-panes", "-t", "main:"+name, "-F", "#{pane_pid}"))
	out, err := exec.Command("pgrep", "-P", pane).Output()
	if err != nil {
		h.t.Fatalf("no program in window %s (pane pid %s): %v", name, pane, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		if err := syscall.Kill(pid, sig); err != nil {
			h.t.Fatal(err)
		}
	}
}
