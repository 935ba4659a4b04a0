package supervisor

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// appLog is the app's log file: every line of every process with a timestamp
// and its source (app[web.1], fcm[supervisor]), rotated at maxLogBytes.
type appLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
	size int64
}

const maxLogBytes = 8 << 20

func openAppLog(path string) (*appLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	l := &appLog{path: path}
	return l, l.open()
}

func (l *appLog) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	fi, _ := f.Stat()
	l.f, l.size = f, fi.Size()
	return nil
}

// Line writes one line from source.
func (l *appLog) Line(source, text string) {
	line := fmt.Sprintf("%s %s: %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), source, text)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size+int64(len(line)) > maxLogBytes {
		l.f.Close()
		os.Rename(l.path, l.path+".1")
		if err := l.open(); err != nil {
			return
		}
	}
	n, _ := l.f.WriteString(line)
	l.size += int64(n)
}

// Printf writes a line from fcm itself.
func (l *appLog) Printf(format string, args ...any) {
	l.Line("fcm[supervisor]", fmt.Sprintf(format, args...))
}

// copyLines writes each line read from r to the log as source, and to each
// extra sink (a deploy's output) as it comes.
func (l *appLog) copyLines(r io.Reader, source string, sinks ...func(string)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		text := sc.Text()
		l.Line(source, text)
		for _, s := range sinks {
			s(text)
		}
	}
}
