// Package vmmtest holds tests every hypervisor driver must pass, run by each
// driver's own tests with what differs between them.
package vmmtest

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
)

// Files name what a driver keeps in a VM's directory, and how its control
// socket appears on the hypervisor's command line (its marker).
type Files struct {
	PIDFile, Socket string
	Marker          func(sock string) string
}

// AdoptAliveButNotAnswering (review M4): a process that is alive with the VM's
// control socket on its command line is never reported gone by d, whether its
// socket is missing or does not answer; Start refuses to boot a second
// hypervisor on the disk and leaves the live one's pid file and socket alone;
// the stray can be killed through its pidfd.
func AdoptAliveButNotAnswering(t *testing.T, d vmm.Driver, f Files) {
	dir, err := os.MkdirTemp("", "vmm-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	spec := vmm.Spec{ID: "abcd1234", Dir: dir, Kernel: "/k", Drives: []vmm.Drive{{ID: "rootfs", Path: dir + "/rootfs.img"}}, VCPUs: 1, MemoryMiB: 256}
	ctx := context.Background()

	if _, err := d.Adopt(ctx, spec); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Adopt with nothing running = %v, want ErrNotRunning", err)
	}
	sock := filepath.Join(dir, f.Socket)
	cmd := exec.Command("sleep", "60")
	cmd.Args[0] = f.Marker(sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()

	// No pid file (lost) and no socket: found by /proc, alive, unresponsive.
	_, err = d.Adopt(ctx, spec)
	var ue *vmm.UnresponsiveError
	if !errors.As(err, &ue) || !errors.Is(err, vmm.ErrUnresponsive) || ue.Instance.PID() != cmd.Process.Pid {
		t.Fatalf("Adopt without socket = %v, want an UnresponsiveError for pid %d", err, cmd.Process.Pid)
	}
	ue.Instance.Close()

	// A pid file and a socket that accepts but never answers.
	if err := os.WriteFile(filepath.Join(dir, f.PIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = d.Adopt(tctx, spec)
	cancel()
	if !errors.As(err, &ue) {
		t.Fatalf("Adopt of a silent control socket = %v, want an UnresponsiveError", err)
	}
	ue.Instance.Close()

	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = d.Start(sctx, spec)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), "not starting a second one") {
		t.Fatalf("Start beside a live hypervisor = %v, want a clear refusal", err)
	}
	for _, name := range []string{f.PIDFile, f.Socket} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("Start removed the live process's %s: %v", name, err)
		}
	}

	// The stray can be killed through its pidfd.
	_, err = d.Adopt(tctx, spec)
	if !errors.As(err, &ue) {
		t.Fatal(err)
	}
	defer ue.Instance.Close()
	if err := ue.Instance.Kill(); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := ue.Instance.Wait(wctx); err != nil {
		t.Fatal(err)
	}
}
