package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
)

var _ vmm.Snapshotter = (*Driver)(nil)

// migrationCaps makes a migration leave out RAM in share=on backends: with
// guest RAM in the VM's memory file only device state is saved (tens of KiB).
var migrationCaps = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// Suspend implements vmm.Snapshotter: QMP stop, then a migration of device
// state (x-ignore-shared: guest RAM stays in spec.MemoryFile) into the state
// file over an fd (QEMU's sandbox forbids exec:, 7.2 has no file:), then quit.
// The daemon opens the file: the sandboxed QEMU only writes the descriptor.
func (d *Driver) Suspend(ctx context.Context, inst vmm.Instance, spec vmm.Spec) error {
	qi, ok := inst.(*Instance)
	if !ok {
		return fmt.Errorf("vm %s: not a qemu instance", spec.ID)
	}
	if spec.MemoryFile == "" {
		return fmt.Errorf("vm %s: its memory is not in a file: it cannot be suspended (start it again first)", spec.ID)
	}
	path := filepath.Join(spec.Dir, vmm.StateFile)
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	defer f.Close()
	defer os.Remove(tmp)
	s, err := openSession(ctx, qi.qmpSocket)
	if err != nil {
		return fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	defer s.close()
	fail := func(err error) error {
		s.exec("migrate_cancel", nil, nil)
		if cerr := s.exec("cont", nil, nil); cerr != nil {
			err = fmt.Errorf("%w; and it could not run again: %v", err, cerr)
		}
		return fmt.Errorf("vm %s: suspend: %w", spec.ID, err)
	}
	if err := s.exec("stop", nil, nil); err != nil {
		return fmt.Errorf("vm %s: suspend: %w", spec.ID, err)
	}
	if err := s.exec("migrate-set-capabilities", migrationCaps, nil); err != nil {
		return fail(err)
	}
	if err := s.execFD("getfd", map[string]any{"fdname": "suspend"}, nil, f); err != nil {
		return fail(err)
	}
	if err := s.exec("migrate", map[string]any{"uri": "fd:suspend"}, nil); err != nil {
		return fail(err)
	}
	if err := s.waitMigration(ctx); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	// From here the state file is the VM: QEMU must not run the guest again.
	s.exec("quit", nil, nil)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := qi.Wait(wctx); err != nil {
		qi.Kill()
		if err := qi.Wait(wctx); err != nil {
			return fmt.Errorf("vm %s: suspended, but qemu (pid %d) did not exit: %w", spec.ID, qi.PID(), err)
		}
	}
	return nil
}

// Restore implements vmm.Snapshotter: QEMU starts with the same machine and
// -incoming defer and loads the device state from the file over an fd (guest
// RAM is the memory file, mapped again: nothing is copied); the guest stays
// paused until Resume.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	inst, err := d.Standby(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := d.RestoreInto(ctx, inst, spec); err != nil {
		return nil, err
	}
	return inst, nil
}

var _ vmm.Standbyer = (*Driver)(nil)

// Standby implements vmm.Standbyer: a QEMU with the VM's machine, memory
// file and tap, waiting under -incoming defer for its state (QMP status
// inmigrate). It holds no guest memory of its own; it takes QEMU's start off
// a wake.
func (d *Driver) Standby(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if spec.MemoryFile == "" {
		return nil, fmt.Errorf("vm %s: no memory file to restore", spec.ID)
	}
	if _, err := os.Stat(spec.MemoryFile); err != nil {
		return nil, fmt.Errorf("vm %s: its memory: %w", spec.ID, err)
	}
	return d.start(ctx, spec, "-incoming", "defer")
}

// RestoreInto implements vmm.Standbyer: the device state from the state file
// into inst (from Standby), over an fd; the guest stays paused until Resume.
// On an error inst is killed.
func (d *Driver) RestoreInto(ctx context.Context, inst vmm.Instance, spec vmm.Spec) error {
	qi, ok := inst.(*Instance)
	if !ok {
		return fmt.Errorf("vm %s: not a qemu instance", spec.ID)
	}
	fail := func(err error) error {
		qi.Kill()
		qi.Wait(context.WithoutCancel(ctx))
		qi.Close()
		return fmt.Errorf("vm %s: restore: %w", spec.ID, err)
	}
	state, err := os.Open(filepath.Join(spec.Dir, vmm.StateFile))
	if err != nil {
		return fail(err)
	}
	defer state.Close()
	s, err := openSession(ctx, qi.qmpSocket)
	if err != nil {
		return fail(err)
	}
	defer s.close()
	if err := s.exec("migrate-set-capabilities", migrationCaps, nil); err != nil {
		return fail(err)
	}
	if err := s.execFD("getfd", map[string]any{"fdname": "suspend"}, nil, state); err != nil {
		return fail(err)
	}
	if err := s.exec("migrate-incoming", map[string]any{"uri": "fd:suspend"}, nil); err != nil {
		return fail(err)
	}
	if err := s.waitMigration(ctx); err != nil {
		return fail(err)
	}
	return nil // paused: Resume (cont) lets it run
}

// Fingerprint is what a suspend image of spec depends on: the QEMU binary
// (its path, size and time) and the machine as its command line describes it
// (devices, memory, drives, in order), less what a restore does not use (the
// kernel, initrd and command line: the guest's kernel is in its memory). A
// wake under another fingerprint cannot load the image.
func (d *Driver) Fingerprint(spec vmm.Spec) string {
	h := sha256.New()
	if st, err := os.Stat(d.binary); err == nil {
		fmt.Fprintf(h, "%s %d %d\n", d.binary, st.Size(), st.ModTime().UnixNano())
	}
	args := MachineArgs(spec, d.accel, d.tscKHz)
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-kernel", "-initrd", "-append":
			i++
			continue
		}
		fmt.Fprintf(h, "%s\x00", args[i])
	}
	return hex.EncodeToString(h.Sum(nil))
}
