package vm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A guest writing 20 MB to its console while the trimmer runs leaves a
// console.log that stays bounded, with no hole at its start, and the newest
// line in the tail.
func TestTrimLog_WhileWriting(t *testing.T) {
	const limit = 256 << 10
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	var done atomic.Bool
	var maxSize, trims atomic.Int64
	stopped := make(chan struct{})
	// The writer waits for a trim pass after every 256 KiB it writes, so a
	// trimmer starved of CPU (a loaded CI machine) cannot let the file grow
	// without bound; between those points the two run freely.
	pass := make(chan chan struct{})
	go func() { // the trimmer, as the daemon runs it but more often
		defer close(stopped)
		for !done.Load() {
			var asked chan struct{}
			select {
			case asked = <-pass:
			case <-time.After(5 * time.Millisecond):
			}
			if st, err := os.Stat(path); err == nil && st.Size() > maxSize.Load() {
				maxSize.Store(st.Size())
			}
			trimmed, err := TrimLog(path, limit)
			if err != nil {
				t.Error(err)
				return
			}
			if trimmed {
				trims.Add(1)
			}
			if asked != nil {
				close(asked)
			}
		}
	}()
	// 20 MB in 1 KiB lines at about 20 MB/s, some 20 times a serial line's rate.
	line := strings.Repeat("x", 1016)
	const lines = 20 << 10
	start := time.Now()
	for i := 0; i < lines; i++ {
		fmt.Fprintf(w, "%06d %s\n", i, line[:1016])
		if i%256 == 255 {
			asked := make(chan struct{})
			pass <- asked
			<-asked
			if ahead := time.Duration(i)*50*time.Microsecond - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	last := fmt.Sprintf("%06d ", lines-1)
	time.Sleep(20 * time.Millisecond)
	done.Store(true)
	<-stopped

	if trims.Load() < 10 {
		t.Errorf("trimmed %d times while 20 MB were written; want many", trims.Load())
	}
	if m := maxSize.Load(); m > 4*limit {
		t.Errorf("console.log reached %d bytes; want it kept near the %d byte cap", m, limit)
	}
	cur, _ := os.ReadFile(path)
	prev, _ := os.ReadFile(path + ".1")
	if len(cur) > 4*limit || len(prev) > 2*limit {
		t.Errorf("console.log is %d bytes, console.log.1 %d; want both near the %d byte cap", len(cur), len(prev), limit)
	}
	if bytes.IndexByte(cur, 0) >= 0 || bytes.IndexByte(prev, 0) >= 0 {
		t.Errorf("a NUL byte in the logs: the writer wrote past a hole after the truncation")
	}
	if !bytes.Contains(cur, []byte(last)) && !bytes.Contains(prev, []byte(last)) {
		t.Errorf("the last line %q is in neither console.log (%d bytes) nor console.log.1 (%d bytes)", last, len(cur), len(prev))
	}
	// Whole-line writes with O_APPEND never straddle a truncation.
	if len(cur) > 0 && (cur[0] < '0' || cur[0] > '9') {
		t.Errorf("console.log starts with %q, not at a line", cur[:min(len(cur), 10)])
	}
	t.Logf("%d trims, console.log peaked at %d KiB; now %d + %d bytes", trims.Load(), maxSize.Load()>>10, len(cur), len(prev))

	// Below the cap nothing happens.
	small := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(small, []byte("boot\n"), 0o600)
	if trimmed, err := TrimLog(small, limit); trimmed || err != nil {
		t.Errorf("TrimLog of a 5-byte log = %v, %v; want false, nil", trimmed, err)
	}
	if _, err := os.Stat(small + ".1"); err == nil {
		t.Errorf("a log under the cap got a .1")
	}
}

// The VM's directory belongs to its hypervisor's user: a console.log it made
// a symlink to a file of root's is never truncated.
func TestTrimLog_Symlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "shadow")
	data := bytes.Repeat([]byte("root:x\n"), 1<<16)
	os.WriteFile(victim, data, 0o600)
	link := filepath.Join(dir, "console.log")
	os.Symlink(victim, link)
	if trimmed, err := TrimLog(link, 1024); trimmed || err == nil {
		t.Errorf("TrimLog of a symlink = %v, %v; want an error", trimmed, err)
	}
	hard := filepath.Join(dir, "qemu.log")
	os.Link(victim, hard)
	if trimmed, err := TrimLog(hard, 1024); trimmed || err == nil {
		t.Errorf("TrimLog of a hard link = %v, %v; want an error", trimmed, err)
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, data) {
		t.Errorf("the link's target changed: %d bytes, was %d", len(got), len(data))
	}
}
