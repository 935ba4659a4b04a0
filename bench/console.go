package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/console"
)

// term is one interactive terminal on the VM: bytes in, output out.
type term interface {
	send(p []byte) error
	// next returns the next chunk of output.
	next(ctx context.Context) ([]byte, error)
	close()
}

// runConsoleBench compares `fcm console` with direct ssh to the same VM:
// keystroke round trips and 50 MB of output; then the daemon's memory for each
// idle attached session.
func runConsoleBench(w io.Writer, keystrokes int) error {
	ctx := context.Background()
	dataDir, err := os.MkdirTemp("", "fcm-bench-console-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	m, st, _, err := qemuManager(dataDir)
	if err != nil {
		return err
	}
	v, err := m.Create(ctx, "bench", api.CreateVMRequest{Name: "console", MemoryMiB: 1024}, nil)
	if err != nil {
		return err
	}
	defer m.Destroy(ctx, v.Name, "")
	c, stop, err := benchAPI(m, st, nil)
	if err != nil {
		return err
	}
	defer stop()

	knownHosts := filepath.Join(dataDir, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(v.IP+" "+v.HostKey+"\n"), 0o600); err != nil {
		return err
	}
	sshArgs := []string{"-tt", "-q", "-i", filepath.Join(dataDir, "id_ed25519"), "-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@" + v.IP}
	opens := []struct {
		name string
		open func() (term, error)
	}{
		{"fcm console (daemon + tmux)", func() (term, error) {
			s, err := c.CreateSession(ctx, v.Name, "")
			if err != nil {
				return nil, err
			}
			return dialTerm(ctx, c.Host, c.Token, v.Name, s.ID)
		}},
		{"ssh (shell)", func() (term, error) { return startSSH(append(sshArgs, "bash")) }},
		{"ssh + tmux", func() (term, error) {
			return startSSH(append(sshArgs, "tmux new-session -A -s bench-ssh"))
		}},
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "PATH\tKEYSTROKE P50\tP99\tN\t50 MB OUTPUT (base64: 67 MB)\n")
	for _, o := range opens {
		t, err := o.open()
		if err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
		rtt, err := keystrokeRTT(ctx, t, keystrokes)
		if err != nil {
			t.close()
			return fmt.Errorf("%s: keystrokes: %w", o.name, err)
		}
		bulk, err := timeCommand(ctx, t, "head -c 50M /dev/zero | base64; echo END-$((40+2))", "END-42")
		t.close()
		if err != nil {
			return fmt.Errorf("%s: 50 MB: %w", o.name, err)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", o.name, percentile(rtt, 0.5).Round(10*time.Microsecond),
			percentile(rtt, 0.99).Round(10*time.Microsecond), len(rtt), bulk.Round(10*time.Millisecond))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return idleSessionMemory(ctx, w, c, v.Name, 20)
}

// keystrokeRTT types n characters at a shell prompt, one at a time, and times
// each from send to the first output back (the echo).
func keystrokeRTT(ctx context.Context, t term, n int) ([]time.Duration, error) {
	if _, err := timeCommand(ctx, t, "PS1='$ '; echo READY-$((1+1))", "READY-2"); err != nil {
		return nil, err
	}
	settle(ctx, t)
	var rtt []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := t.send([]byte{'a' + byte(i%26)}); err != nil {
			return nil, err
		}
		if _, err := t.next(ctx); err != nil {
			return nil, err
		}
		rtt = append(rtt, time.Since(start))
		if i%40 == 39 { // clear the line now and then
			t.send([]byte{0x15})
			settle(ctx, t)
		}
		settle(ctx, t)
	}
	t.send([]byte{0x15})
	settle(ctx, t)
	return rtt, nil
}

// settle drains output until there is none for 100 ms.
func settle(ctx context.Context, t term) {
	for {
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := t.next(ctx)
		cancel()
		if err != nil {
			return
		}
	}
}

// timeCommand runs cmd at the prompt and times it until want appears.
func timeCommand(ctx context.Context, t term, cmd, want string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := t.send([]byte(cmd + "\r")); err != nil {
		return 0, err
	}
	var tail []byte
	for {
		p, err := t.next(ctx)
		if err != nil {
			return 0, fmt.Errorf("waiting for %q: %w", want, err)
		}
		tail = append(tail, p...)
		if bytes.Contains(tail, []byte(want)) {
			return time.Since(start), nil
		}
		if len(tail) > 256 {
			tail = tail[len(tail)-64:]
		}
	}
}

// output is a terminal's output, read by a goroutine of its own: a WebSocket
// read cut short by a deadline would close the connection.
type output chan []byte

func (o output) next(ctx context.Context) ([]byte, error) {
	select {
	case p, ok := <-o:
		if !ok {
			return nil, io.EOF
		}
		return p, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wsTerm is a console attachment over the daemon's WebSocket.
type wsTerm struct {
	output
	ws    *websocket.Conn
	hello console.Control
}

func dialTerm(ctx context.Context, host, token, vm, id string) (*wsTerm, error) {
	u := strings.Replace(host, "http", "ws", 1) + "/v1/vms/" + vm + "/sessions/" + id + "/attach?cols=80&rows=24" // as ssh -tt without a terminal
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	t := &wsTerm{output: make(output, 64), ws: ws}
	_, p, err := ws.Read(ctx)
	if err != nil || json.Unmarshal(p, &t.hello) != nil || t.hello.Type != "hello" {
		ws.CloseNow()
		return nil, fmt.Errorf("attach %s: no hello: %v", id, err)
	}
	go func() {
		defer close(t.output)
		for {
			typ, p, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				t.output <- p
			}
		}
	}()
	return t, nil
}

func (t *wsTerm) send(p []byte) error {
	return t.ws.Write(context.Background(), websocket.MessageBinary, p)
}
func (t *wsTerm) close() { t.ws.Close(websocket.StatusNormalClosure, "") }

// sshTerm is the ssh command with a remote PTY (-tt).
type sshTerm struct {
	output
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startSSH(args []string) (*sshTerm, error) {
	cmd := exec.Command("ssh", args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &sshTerm{output: make(output, 64), cmd: cmd, stdin: stdin}
	go func() {
		defer close(t.output)
		for {
			buf := make([]byte, 32<<10)
			n, err := stdout.Read(buf)
			if n > 0 {
				t.output <- buf[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	return t, nil
}

func (t *sshTerm) send(p []byte) error { _, err := t.stdin.Write(p); return err }
func (t *sshTerm) close()              { t.cmd.Process.Kill(); t.cmd.Wait() }

// idleSessionMemory attaches n idle sessions from another process and reports
// how much the daemon's heap and stacks grew.
func idleSessionMemory(ctx context.Context, w io.Writer, c *client.Client, vm string, n int) error {
	var ids []string
	for i := 0; i < n; i++ {
		s, err := c.CreateSession(ctx, vm, fmt.Sprintf("idle-%d", i))
		if err != nil {
			return err
		}
		ids = append(ids, s.ID)
	}
	before, rssBefore := daemonMemory()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "FCM_BENCH_CLIENTS="+strings.Join(append([]string{c.Host, c.Token, vm}, ids...), ","))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "attached" {
		return fmt.Errorf("clients: %q %v", line, err)
	}
	time.Sleep(3 * time.Second) // idle
	after, rssAfter := daemonMemory()
	attached := 0
	sessions, err := c.ListSessions(ctx, vm)
	if err != nil {
		return err
	}
	for _, s := range sessions {
		attached += s.Attached
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nIDLE ATTACHED SESSIONS\tATTACHED\tHEAP+STACKS PER SESSION\tRSS PER SESSION\n")
	fmt.Fprintf(tw, "%d\t%d\t%.0f KiB\t%.0f KiB\n", n, attached, float64(int64(after)-int64(before))/float64(n)/1024,
		float64(int64(rssAfter)-int64(rssBefore))/float64(n)/1024)
	return tw.Flush()
}

func daemonMemory() (heapStacks uint64, rss uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss = kb * 1024
		}
	}
	return ms.HeapInuse + ms.StackInuse, rss
}

// benchClients is the child process of idleSessionMemory: it attaches to each
// session, says "attached" once every one has said hello, and waits.
func benchClients(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) < 4 {
		return errors.New("FCM_BENCH_CLIENTS: host,token,vm,id...")
	}
	ctx := context.Background()
	for _, id := range f[3:] {
		t, err := dialTerm(ctx, f[0], f[1], f[2], id)
		if err != nil {
			return err
		}
		go func() { // keep reading, as a terminal would
			for range t.output {
			}
		}()
	}
	fmt.Println("attached")
	select {}
}
