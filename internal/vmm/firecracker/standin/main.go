// Command standin is a test-only stand-in for the firecracker binary, for hosts
// that cannot run Firecracker. fcm's tests build it, put it on PATH as
// "firecracker" and prove the Firecracker driver against it; production code
// never uses it.
//
// It takes Firecracker's command line (--api-sock, --id, --version and the
// logging, seccomp, MMDS and payload flags, which it accepts and ignores) and
// serves Firecracker's HTTP API on the unix socket. Every request is checked
// against Firecracker's own API description (firecracker-api.yaml, swagger 2.0,
// embedded): the method and path must be in the spec; a required body must be
// there; the body must match its definition recursively (no unknown fields, all
// required ones, JSON types, enums, minimum and maximum); an id in the path must
// equal the body's; "Pre-boot only" operations are refused after InstanceStart,
// "Post-boot only" ones before. Then Firecracker's documented rules apply: the
// kernel, initrd and drive files must open (a drive read-write unless
// is_read_only), the tap must exist, at most one root drive, vCPUs 1-32,
// InstanceStart needs a kernel. The drives are attached as Firecracker orders
// them (the root device first, as /dev/vda, then the others in configuration
// order) and the kernel command line gets what Firecracker appends to boot_args
// (pci=off, root=/dev/vda ro|rw; see drives.go). Operations of the
// spec that the stand-in does not implement answer 400, so nothing silently
// succeeds. Every request, refused ones too, is appended as a JSON line to
// $FCM_STANDIN_RECORD (default <api-sock>.requests.jsonl) for tests to compare
// with what a driver should have sent.
//
// InstanceStart boots the microVM for real with qemu-system-x86_64 (the qemu
// driver's microvm machine, KVM or TCG), the guest console on stdout as
// Firecracker's; SendCtrlAltDel presses Ctrl-Alt-Del through QMP. When QEMU
// exits (the guest rebooted) the stand-in exits 0, as Firecracker does.
//
// The snapshot calls follow Firecracker's rules (snapshot.go): PATCH /vm
// pauses and resumes a booted microVM (repeats are no-ops); PUT
// /snapshot/create, of a paused one only, writes a state file and a memory
// file (Full, or Diff: the pages changed since the load) and leaves it
// paused; PUT /snapshot/load, only before anything but the logger or metrics
// is configured, restores one with its memory file mapped privately, paused
// unless resume_vm, and any failure of it ends the process.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fcm stand-in: "+format+"\n", args...)
}

func main() { os.Exit(run(os.Args[1:])) }

func run(argv []string) int {
	spec, err := loadSpec()
	if err != nil {
		logf("%v", err)
		return 1
	}
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	sock := fs.String("api-sock", "", "path of the API unix socket (required)")
	id := fs.String("id", "", "microVM id")
	version := fs.Bool("version", false, "print the version and exit")
	maxPayload := fs.Int64("http-api-max-payload-size", 51200, "largest request body in bytes")
	for _, name := range []string{"log-path", "level", "seccomp-filter", "metadata"} {
		fs.String(name, "", "accepted and ignored")
	}
	for _, name := range []string{"show-level", "show-log-origin", "no-seccomp", "boot-timer"} {
		fs.Bool(name, false, "accepted and ignored")
	}
	fs.Int64("mmds-size-limit", 0, "accepted and ignored")
	if err := fs.Parse(argv); err != nil {
		return 1 // the flag package has said why on stderr
	}
	switch {
	case *version:
		fmt.Printf("Firecracker v%s (fcm stand-in)\n", spec.Info.Version)
		return 0
	case fs.NArg() > 0:
		logf("unexpected argument %q", fs.Arg(0))
		return 1
	case *sock == "":
		logf("--api-sock is required")
		return 1
	case *id != "" && !validInstanceID(*id):
		logf("Invalid instance ID: %q (want 1-64 of A-Z, a-z, 0-9 and -)", *id)
		return 1
	}
	if _, err := os.Lstat(*sock); err == nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at %s: address in use\n", *sock)
		return 1
	}
	l, err := net.Listen("unix", *sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at %s: %v\n", *sock, err)
		return 1
	}
	a := &api{spec: spec, id: *id, sock: *sock, maxPayload: *maxPayload, machine: defaultMachine()}
	if a.record = os.Getenv("FCM_STANDIN_RECORD"); a.record == "" {
		a.record = *sock + ".requests.jsonl"
	}
	if abs, err := filepath.Abs(a.sock); err == nil {
		a.sock = abs
	}
	var exitMu sync.Mutex // taken by whoever ends the process, never released
	cleanup := func() {
		l.Close()
		os.Remove(*sock)
	}
	a.exit = func(code int) {
		exitMu.Lock()
		cleanup()
		os.Exit(code)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := (<-sigs).(syscall.Signal)
		exitMu.Lock()
		a.mu.Lock() // wait out a request in progress (an InstanceStart)
		if a.vm != nil {
			a.vm.kill()
		}
		cleanup()
		logf("%v: stopped", sig)
		// End by the signal, as Firecracker, which does not handle it, would.
		signal.Reset(sig)
		syscall.Kill(os.Getpid(), sig)
		time.Sleep(time.Second)
		os.Exit(128 + int(sig))
	}()
	logf("serving the Firecracker API (v%s) on %s", spec.Info.Version, *sock)
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	err = srv.Serve(l)
	if errors.Is(err, net.ErrClosed) {
		select {} // the exit path is running
	}
	logf("serve: %v", err)
	a.exit(1)
	return 1
}

func validInstanceID(id string) bool {
	if len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
