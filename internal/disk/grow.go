package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// maxOutput caps how much of a tool's output goes into an error.
const maxOutput = 2048

// Grow enlarges the ext4 filesystem in the image at path to size bytes: it
// truncates the file up to size (a size smaller than the current one is an
// error: images are never shrunk), runs `e2fsck -fp` (exit codes 0 and 1 are
// success) and then `resize2fs path`, which grows the filesystem to fill the
// file. If e2fsck fails, the file is truncated back to its old size. Errors
// carry the failing tool's output.
func Grow(ctx context.Context, path string, size int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	if size <= 0 {
		return fmt.Errorf("grow %s: invalid size %d", path, size)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("grow: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("grow %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	old := fi.Size()
	if size < old {
		return fmt.Errorf("grow %s: size %d is smaller than the current %d bytes (images are never shrunk)", path, size, old)
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow: %w", err)
	}

	// resize2fs insists on a freshly checked filesystem; -f checks even a
	// clean one, -p repairs only what is safe without asking.
	code, err := runTool(ctx, "e2fsck", "-fp", path)
	if err != nil && !fsckOK(code) {
		if size != old {
			// Nothing was resized yet: put the file back as it was.
			_ = os.Truncate(path, old)
		}
		return fmt.Errorf("grow %s: %w", path, err)
	}
	if _, err := runTool(ctx, "resize2fs", path); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	return nil
}

// fsckOK reports whether an e2fsck exit code means the filesystem is now
// consistent: 0 (no errors) or 1 (errors corrected).
func fsckOK(code int) bool {
	return code == 0 || code == 1
}

// runTool runs an e2fsprogs tool and returns its exit code (-1 if it did not
// run to an exit) and, unless it exited 0, an error that names the command
// and carries its output.
func runTool(ctx context.Context, name string, args ...string) (int, error) {
	bin, err := toolPath(name)
	if err != nil {
		return -1, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err == nil {
		return 0, nil
	}
	what := strings.Join(append([]string{name}, args...), " ")
	if cerr := ctx.Err(); cerr != nil {
		return -1, fmt.Errorf("%s: %w", what, cerr)
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	if msg := toolOutput(out); msg != "" {
		return code, fmt.Errorf("%s: %w: %s", what, err, msg)
	}
	return code, fmt.Errorf("%s: %w", what, err)
}

// toolPath finds an e2fsprogs tool in $PATH, or in the sbin directories that
// a non-root $PATH often lacks.
func toolPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		cand := filepath.Join(dir, name)
		if fi, serr := os.Stat(cand); serr == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", fmt.Errorf("%s not found (install e2fsprogs): %w", name, err)
}

// toolOutput turns a tool's output into one line for an error message:
// blank lines dropped, the rest joined with "; ", capped at maxOutput bytes.
func toolOutput(out []byte) string {
	var parts []string
	for line := range bytes.Lines(out) {
		if s := strings.TrimSpace(string(line)); s != "" {
			parts = append(parts, s)
		}
	}
	s := strings.Join(parts, "; ")
	if len(s) > maxOutput {
		s = s[:maxOutput] + "..."
	}
	return s
}
