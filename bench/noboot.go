package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/fcmhost/fcm/internal/vmm"
)

// noBoot is a vmm.Driver whose "hypervisor" is a sleeping process: it measures
// what the daemon itself costs per create (store, disk, keys, tap), not a boot.
type noBoot struct{}

var _ vmm.Driver = noBoot{}

func (noBoot) Name() string { return "noboot" }

func (noBoot) Start(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	cmd := exec.Command("sleep", "3600")
	cmd.Args[0] = "noboot:" + spec.Dir // argv[0] names the VM's dir, as Adopt checks
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait()
	if err := os.WriteFile(filepath.Join(spec.Dir, "noboot.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	return noBoot{}.Adopt(ctx, spec)
}

func (noBoot) Adopt(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	pid, err := vmm.ReadPIDFile(filepath.Join(spec.Dir, "noboot.pid"))
	if err != nil {
		return nil, err
	}
	p, err := vmm.OpenProcess(pid, spec.Dir)
	if err != nil {
		return nil, err
	}
	return sleeper{p}, nil
}

type sleeper struct{ *vmm.Process }

func (s sleeper) Shutdown(context.Context) error { return s.Signal(syscall.SIGTERM) }
func (s sleeper) Kill() error                    { return s.Signal(syscall.SIGKILL) }
