// Package supervisor runs an app's processes inside its VM: each release in a
// network namespace of its own (a slot), a proxy on the VM's public port that
// sends requests to the current release, health-checked switches between
// releases without downtime, restarts with backoff, and the app's log. It runs
// as a child of the guest's init and answers the guest agent on a unix socket.
package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/release"
	"golang.org/x/sys/unix"
)

// Supervisor is the running state: the current release's slot and processes.
type Supervisor struct {
	log   *appLog
	proxy *proxy
	ctx   context.Context

	op      sync.Mutex    // one activation at a time
	retired chan struct{} // closed once the release before the current one is stopped (under op)
	mu      sync.Mutex    // guards the fields below
	current *running
	ports   map[int]bool
}

// running is a release started in a slot.
type running struct {
	spec   release.Spec
	slot   *slot
	procs  []*proc
	target *target
	tail   *tailBuf
}

// Run serves until ctx ends: it starts the current release (after a boot or a
// restart of the supervisor), then answers requests on release.SocketPath.
func Run(ctx context.Context) error {
	lg, err := openAppLog(release.LogFile)
	if err != nil {
		return err
	}
	s := &Supervisor{log: lg, proxy: newProxy(lg), ctx: ctx, ports: map[int]bool{}, retired: closed()}
	if err := enableNAT(); err != nil {
		lg.Printf("%v (apps get no outbound network)", err)
	}
	for _, name := range []string{"a", "b"} {
		destroySlot(name) // a supervisor that died leaves its releases behind
	}
	port := release.DefaultPort
	if spec, err := readCurrent(); err == nil {
		port = spec.Port
		if err := s.resume(spec); err != nil {
			lg.Printf("start v%d: %v", spec.Version, err)
		}
	}
	s.listen(port)
	return s.serveSocket(ctx)
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func readCurrent() (release.Spec, error) {
	var spec release.Spec
	data, err := os.ReadFile(release.Current)
	if err != nil {
		return spec, err
	}
	return spec, json.Unmarshal(data, &spec)
}

// writeCurrent records spec as the release to run after a boot, durably: a
// host that loses power (or a hypervisor killed) right after a deploy must
// boot into it, not into a current.json of zeros (ext4 allocates a new file's
// blocks late) or a build whose files never reached the disk. So the whole
// filesystem is synced first (the build, its dependencies), then the file
// and its directory.
func writeCurrent(spec release.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := syncFS(release.Root); err != nil {
		return err
	}
	tmp := release.Current + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, release.Current); err != nil {
		return err
	}
	return syncFS(filepath.Dir(release.Current))
}

// syncFS writes out everything the filesystem holding dir has in memory.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// listen opens the public port once.
func (s *Supervisor) listen(port int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports[port] {
		return
	}
	s.ports[port] = true
	go func() {
		for s.ctx.Err() == nil {
			if err := s.proxy.serve(s.ctx, port); err != nil {
				s.log.Printf("port %d: %v; retrying", port, err)
				time.Sleep(time.Second)
			}
		}
	}()
}

// resume starts the current release after a boot, without a health check and
// without its release command (that ran when it was released).
func (s *Supervisor) resume(spec release.Spec) error {
	spec.RunRelease = false
	r, err := s.start(s.ctx, spec, "a", nil)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.current = r
	s.mu.Unlock()
	s.proxy.swap(r.target)
	return nil
}

// start makes the slot and starts every process of spec's build in it.
func (s *Supervisor) start(ctx context.Context, spec release.Spec, slotName string, out func(string)) (*running, error) {
	res, err := readResult(spec.Build)
	if err != nil {
		return nil, err
	}
	sl, err := newSlot(slotName)
	if err != nil {
		return nil, err
	}
	r := &running{spec: spec, slot: sl, tail: &tailBuf{}}
	dir := release.BuildDir(spec.Build)
	if res.Release != "" && spec.RunRelease {
		if err := s.runRelease(ctx, r, res, dir, out); err != nil {
			sl.close()
			return nil, err
		}
	}
	for _, typ := range res.Types() {
		p := &proc{typ: typ, command: res.Processes[typ], dir: dir, version: spec.Version,
			env: processEnv(spec, res, typ), slot: sl, log: s.log, tail: r.tail,
			wake: make(chan struct{}), done: make(chan struct{}), exits: make(chan string, 1), state: "starting"}
		r.procs = append(r.procs, p)
		go p.run()
	}
	if _, ok := res.Processes["web"]; ok {
		r.target = s.proxy.newTarget(spec.Version, net.JoinHostPort(sl.appIP.String(), fmt.Sprint(spec.Port)))
	}
	return r, nil
}

// runRelease runs the Procfile's release command once, in the new slot.
func (s *Supervisor) runRelease(ctx context.Context, r *running, res release.Result, dir string, out func(string)) error {
	say(out, "-----> Running release command: %s", res.Release)
	cmd := appCmd(res.Release, dir, processEnv(r.spec, res, "release"))
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := r.slot.start(cmd); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("release command: %w", err)
	}
	pw.Close()
	stop := context.AfterFunc(ctx, func() { unix.Kill(-cmd.Process.Pid, unix.SIGKILL) })
	defer stop()
	s.log.copyLines(pr, "app[release.1]", func(l string) { say(out, "       %s", l) })
	pr.Close()
	err = cmd.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("deploy canceled during the release command")
	}
	if err != nil {
		return fmt.Errorf("the release command %s", describeExit(err))
	}
	return nil
}

func say(out func(string), format string, args ...any) {
	if out != nil {
		out(fmt.Sprintf(format, args...))
	}
}

func readResult(build int) (release.Result, error) {
	var res release.Result
	data, err := os.ReadFile(filepath.Join(release.BuildDir(build), release.BuildInfo))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("build %d is not in this VM (builds are kept for the last %d releases): push again", build, release.KeepBuilds)
		}
		return res, err
	}
	return res, json.Unmarshal(data, &res)
}

// Env is the environment a one-off command of spec's release runs with.
func Env(spec release.Spec, typ string) []string {
	res, _ := readResult(spec.Build)
	return processEnv(spec, res, typ)
}

// processEnv is a process's environment: the runtimes' settings, then the
// app's config vars, then what fcm sets itself.
func processEnv(spec release.Spec, res release.Result, typ string) []string {
	env := map[string]string{
		"HOME": release.Home, "USER": release.User, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
		"PATH": "/usr/local/bin:/usr/bin:/bin",
	}
	for k, v := range res.Env {
		env[k] = v
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	if len(res.PathAdd) > 0 {
		env["PATH"] = strings.Join(res.PathAdd, ":") + ":" + env["PATH"]
	}
	env["PORT"] = fmt.Sprint(spec.Port)
	env["FCM_RELEASE"] = fmt.Sprintf("v%d", spec.Version)
	env["FCM_PROCESS"] = typ + ".1"
	return envList(env)
}

// stopRunning stops a release's processes and removes its slot.
func (s *Supervisor) stopRunning(r *running) {
	var wg sync.WaitGroup
	for _, p := range r.procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(10 * time.Second) }()
	}
	wg.Wait()
	r.slot.close()
}
