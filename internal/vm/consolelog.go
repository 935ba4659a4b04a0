package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ConsoleLogCap is the size at which a VM's console.log is trimmed: its last
// ConsoleLogCap bytes go to console.log.1 (replacing the one before) and
// console.log starts again empty. A guest writing to its serial console
// without end so costs the host at most about twice the cap, plus what it
// writes between two trims (the serial line runs at well under 1 MB/s).
const ConsoleLogCap = 1 << 20

// ConsoleTrimEvery is how often KeepConsoleLogsTrimmed looks at the logs.
const ConsoleTrimEvery = 2 * time.Second

// trimmedLogs are the files in a VM's directory that a hypervisor appends to
// (O_APPEND) and a guest can make grow: the serial console, and QEMU's own
// stderr, where device models warn about a misbehaving guest.
var trimmedLogs = []string{"console.log", "qemu.log"}

// KeepConsoleLogsTrimmed runs TrimConsoleLogs every ConsoleTrimEvery until ctx
// ends; the daemon runs it in a goroutine.
func (m *Manager) KeepConsoleLogsTrimmed(ctx context.Context) {
	t := time.NewTicker(ConsoleTrimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.TrimConsoleLogs()
		}
	}
}

// TrimConsoleLogs trims the logs of the VMs whose hypervisor runs (see
// ConsoleLogCap).
func (m *Manager) TrimConsoleLogs() {
	m.mu.Lock()
	ids := make([]string, 0, len(m.instances))
	for id := range m.instances {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		for _, name := range trimmedLogs {
			path := filepath.Join(m.dir(id), name)
			if trimmed, err := TrimLog(path, ConsoleLogCap); err != nil && !errors.Is(err, os.ErrNotExist) {
				m.log.Warn("trim console log", "vm_id", id, "file", name, "err", err)
			} else if trimmed {
				m.log.Debug("trimmed console log", "vm_id", id, "file", name)
			}
		}
	}
}

// TrimLog trims the log at path when it is larger than limit: its last limit
// bytes are written to path.1 (atomically replacing the one before), and path
// is truncated to zero. Writers that opened path with O_APPEND go on writing
// at its new end; what they write between the copy and the truncation (a
// moment) is lost. It reports whether it trimmed.
func TrimLog(path string, limit int64) (bool, error) {
	// The VM's directory belongs to the hypervisor's user: never follow a
	// symlink it may have put there, nor truncate a file linked elsewhere.
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !st.Mode().IsRegular() || st.Sys().(*syscall.Stat_t).Nlink != 1 {
		return false, fmt.Errorf("trim %s: not a regular file with one link", path)
	}
	if st.Size() <= limit {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".trim-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	// Copy the last limit bytes up to the end as it is now, and again what the
	// writer appended meanwhile, so the newest lines are kept.
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		tmp.Close()
		return false, err
	}
	pos := max(0, end-limit)
	for i := 0; i < 3 && err == nil && end > pos; i++ {
		_, err = io.Copy(tmp, io.NewSectionReader(f, pos, end-pos))
		pos = end
		if err == nil {
			end, err = f.Seek(0, io.SeekEnd)
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("trim %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		return false, fmt.Errorf("trim %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path+".1"); err != nil {
		return false, fmt.Errorf("trim %s: %w", path, err)
	}
	return true, nil
}
