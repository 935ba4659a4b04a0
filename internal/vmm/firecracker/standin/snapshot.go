package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// Firecracker's snapshot API on QEMU.
//
// PATCH /vm pauses (QMP stop) and resumes (cont) the vCPUs.
//
// PUT /snapshot/create (paused only) writes the state file: a header line,
// the microVM's configuration as one JSON line (Firecracker's state file holds
// its configuration too), then QEMU's migration stream less the guest's RAM;
// and the memory file: all of guest memory, the size of the guest's RAM, its
// zero pages left as holes. A Diff snapshot of a guest loaded from a memory
// file writes only the pages that differ from that file (at least the pages
// written since the load are what Firecracker's Diff holds; a page written
// back unchanged is left out), the rest holes, so the file merged onto the
// loaded one is the guest's memory; of a guest this process booted, a Diff
// holds all of it, as after a boot every page counts as written. Both are truncated first. Firecracker's Full
// snapshot writes all memory too: the stand-in reads it from QEMU's migration
// stream (see stream.go), the only way QEMU 7.2 hands out the RAM of a
// guest whose memory is mapped privately.
//
// PUT /snapshot/load (a fresh process, before any configuration) starts QEMU
// with the saved machine, its RAM the memory file mapped privately
// (memory-backend-file share=off: MAP_PRIVATE, as Firecracker's File backend
// maps it; QEMU never writes the file) and -incoming defer, and loads the
// state file's stream into it: only device state and small ROM blocks are
// read, so the load does not grow with guest memory; the guest's pages come
// from the file on first touch. Any failure of a load ends the process, as in
// Firecracker.

// snapshotMagic starts a state file; the version is the API's, checked at
// load as Firecracker checks its state file's version.
const snapshotMagic = "fcm-standin-snapshot "

// Firecracker's fault messages for the snapshot calls.
const (
	msgLoadNotAllowed = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgNotPaused      = "Cannot save the microVM state: save/restore unavailable while running"
)

// snapshotConfig is the state file's JSON line.
type snapshotConfig struct {
	Spec    vmm.Spec      `json:"spec"` // the QEMU machine, as booted
	Accel   qemu.Accel    `json:"accel"`
	Boot    *bootSource   `json:"boot"`
	Drives  []*drive      `json:"drives"`
	Ifaces  []*netIface   `json:"ifaces"`
	Machine machineConfig `json:"machine"`
}

// fatalError is a failure that ends the process once answered.
type fatalError struct{ error }

func (a *api) patchVM(_ map[string]string, body []byte) (any, error) {
	var v struct {
		State string `json:"state"`
	}
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	if !a.started {
		return nil, errors.New(msgBeforeStart)
	}
	pause := v.State == "Paused"
	if pause == a.paused {
		return nil, nil // a repeat does nothing
	}
	cmd := "cont"
	if pause {
		cmd = "stop"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := qemu.QMP(ctx, a.vm.qmpSock, cmd, nil, nil); err != nil {
		return nil, fmt.Errorf("Failed to %s the microVM: %v", strings.ToLower(strings.TrimSuffix(v.State, "d")), err)
	}
	a.paused = pause
	a.saved = a.saved && pause
	return nil, nil
}

type snapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type"`
}

func (a *api) createSnapshot(_ map[string]string, body []byte) (any, error) {
	var c snapshotCreate
	if err := decode(body, &c); err != nil {
		return nil, err
	}
	switch {
	case c.SnapshotType != "" && c.SnapshotType != "Full" && c.SnapshotType != "Diff":
		return nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Full` or `Diff`", c.SnapshotType)
	case !a.paused:
		return nil, errors.New(msgNotPaused)
	case a.saved:
		// QEMU 7.2 leaves its disks inactive after a migration, until cont.
		return nil, errors.New("The fcm stand-in cannot snapshot a microVM twice unless it was resumed in between")
	}
	if a.memFile != "" && sameFile(a.memFile, c.MemFilePath) {
		// Firecracker would truncate the file its guest's memory is mapped
		// from, and fault on the pages it then reads: refused here instead.
		return nil, fmt.Errorf("Cannot create the memory file %s: the microVM's memory is mapped from it (the fcm stand-in refuses what would corrupt it)", c.MemFilePath)
	}
	cfg, _ := json.Marshal(snapshotConfig{Spec: a.vmspec, Accel: a.accel, Boot: a.boot, Drives: a.drives, Ifaces: a.ifaces, Machine: a.machine})
	state, err := os.OpenFile(c.SnapshotPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("Cannot save the microVM state: cannot open the snapshot file: %v", err)
	}
	defer state.Close()
	mem, err := os.OpenFile(c.MemFilePath, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("Cannot save the memory: cannot open the memory file: %v", err)
	}
	defer mem.Close()
	if _, err := fmt.Fprintf(state, "%s%s\n%s\n", snapshotMagic, a.spec.Info.Version, cfg); err != nil {
		return nil, fmt.Errorf("Cannot save the microVM state: %v", err)
	}
	var base []byte
	if c.SnapshotType == "Diff" && a.memFile != "" {
		// The pages written since the load are those that differ from the
		// file it loaded (a guest this process booted: all of them).
		if base, err = mapFile(a.memFile); err != nil {
			return nil, fmt.Errorf("Cannot save the memory: %v", err)
		}
		defer syscall.Munmap(base)
	}
	if err := a.vm.save(state, mem, base); err != nil {
		return nil, fmt.Errorf("Cannot save the microVM state: %v", err)
	}
	a.saved = true
	return nil, nil
}

// mapFile maps a file read-only.
func mapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
}

// save streams QEMU's state to the files (see stream.go): migrate to one end
// of a socket pair, split what comes out of the other.
func (vm *vmProcess) save(state io.Writer, mem *os.File, base []byte) error {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "migration"), os.NewFile(uintptr(fds[1]), "migration-qemu")
	defer ours.Close()
	defer theirs.Close()
	split := make(chan error, 1)
	go func() {
		_, err := splitStream(ours, state, mem, base)
		split <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := dialQMP(ctx, vm.qmpSock)
	if err != nil {
		return err
	}
	defer s.close()
	err = s.migrate(ctx, theirs)
	theirs.Close() // QEMU has its own: EOF when it closes it
	if err != nil {
		ours.Close() // ends the splitter
		<-split
		return err
	}
	return <-split
}

type memBackendParams struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type snapshotLoad struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemFilePath         *string           `json:"mem_file_path"`
	MemBackend          *memBackendParams `json:"mem_backend"`
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots"`
	TrackDirtyPages     bool              `json:"track_dirty_pages"`
	ResumeVM            bool              `json:"resume_vm"`
	NetworkOverrides    []struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	} `json:"network_overrides"`
	VsockOverride *struct {
		UDSPath string `json:"uds_path"`
	} `json:"vsock_override"`
	ClockRealtime bool    `json:"clock_realtime"`
	HugePages     *string `json:"huge_pages"`
}

func (a *api) loadSnapshot(_ map[string]string, body []byte) (any, error) {
	var l snapshotLoad
	if err := decode(body, &l); err != nil {
		return nil, err
	}
	if a.bootPath {
		return nil, errors.New(msgLoadNotAllowed)
	}
	if (l.MemFilePath == nil) == (l.MemBackend == nil) {
		return nil, errors.New("Exactly one of mem_backend and mem_file_path must be given.")
	}
	backend := memBackendParams{BackendType: "File"}
	if l.MemBackend != nil {
		backend = *l.MemBackend
	} else {
		backend.BackendPath = *l.MemFilePath
	}
	if err := a.load(l, backend); err != nil {
		return nil, fatalError{fmt.Errorf("Failed to restore from snapshot: %v", err)}
	}
	return nil, nil
}

// load is a snapshot load past its parameters' checks; any error ends the process.
func (a *api) load(l snapshotLoad, backend memBackendParams) error {
	switch {
	case backend.BackendType != "File":
		return fmt.Errorf("memory backend %s is not implemented by the fcm stand-in", backend.BackendType)
	case l.ClockRealtime:
		return errors.New("clock_realtime is not implemented by the fcm stand-in")
	case l.HugePages != nil && *l.HugePages != "Snapshot" && *l.HugePages != "None":
		return fmt.Errorf("huge_pages %s is not implemented by the fcm stand-in", *l.HugePages)
	case l.VsockOverride != nil:
		return errors.New("vsock_override: the snapshot has no vsock device")
	}
	state, err := os.Open(l.SnapshotPath)
	if err != nil {
		return fmt.Errorf("cannot open the snapshot file: %v", err)
	}
	defer state.Close()
	cfg, streamAt, err := a.readState(state)
	if err != nil {
		return err
	}
	for _, o := range l.NetworkOverrides {
		found := false
		for _, n := range cfg.Ifaces {
			if n.IfaceID == o.IfaceID {
				n.HostDevName, cfg.Spec.TapDevice, found = o.HostDevName, o.HostDevName, true
			}
		}
		if !found {
			return fmt.Errorf("network override: no interface %s in the snapshot", o.IfaceID)
		}
	}
	// The devices open their files again, as Firecracker's do.
	for _, d := range cfg.Drives {
		if err := openable(*d.PathOnHost, !d.readOnly()); err != nil {
			return fmt.Errorf("drive %s: %v", d.DriveID, err)
		}
	}
	for _, n := range cfg.Ifaces {
		if _, err := net.InterfaceByName(n.HostDevName); err != nil {
			return fmt.Errorf("Open tap device failed: %s: %v", n.HostDevName, err)
		}
	}
	st, err := os.Stat(backend.BackendPath)
	if err != nil {
		return fmt.Errorf("cannot open the memory file: %v", err)
	}
	if want := int64(cfg.Spec.MemoryMiB) << 20; st.Size() != want || !st.Mode().IsRegular() {
		return fmt.Errorf("the memory file %s is %d bytes, the guest's memory %d", backend.BackendPath, st.Size(), want)
	}
	args := withMemory(reportDiskErrors(qemu.MachineArgs(cfg.Spec, cfg.Accel, 0)),
		fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=off", memBackend, cfg.Spec.MemoryMiB, strings.ReplaceAll(backend.BackendPath, ",", ",,")))
	vm, err := a.spawn("LoadSnapshot", append(args, "-incoming", "defer"), false)
	if err != nil {
		return err
	}
	if _, err := state.Seek(streamAt, io.SeekStart); err != nil {
		return vm.failed(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := dialQMP(ctx, vm.qmpSock)
	if err != nil {
		return vm.failed(err)
	}
	defer s.close()
	if err := s.incoming(ctx, state); err != nil {
		return vm.failed(err)
	}
	if l.ResumeVM {
		if _, err := s.exec("cont", nil, nil); err != nil {
			return vm.failed(err)
		}
	}
	cfg.Machine.TrackDirtyPages = l.TrackDirtyPages || l.EnableDiffSnapshots
	a.vmspec, a.accel, a.boot, a.drives, a.ifaces, a.machine = cfg.Spec, cfg.Accel, cfg.Boot, cfg.Drives, cfg.Ifaces, cfg.Machine
	a.memFile, a.paused = backend.BackendPath, !l.ResumeVM
	a.run(vm)
	return nil
}

// readState reads a state file's header and configuration; streamAt is
// where QEMU's stream starts.
func (a *api) readState(f *os.File) (cfg snapshotConfig, streamAt int64, err error) {
	r := bufio.NewReader(f)
	head, err := r.ReadString('\n')
	version, ok := strings.CutPrefix(strings.TrimSuffix(head, "\n"), snapshotMagic)
	if err != nil || !ok {
		return cfg, 0, errors.New("the snapshot file is not a snapshot of the fcm stand-in")
	}
	if version != a.spec.Info.Version {
		return cfg, 0, fmt.Errorf("the snapshot's version %s does not match this Firecracker's %s", version, a.spec.Info.Version)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return cfg, 0, fmt.Errorf("the snapshot file: %v", err)
	}
	if err := json.Unmarshal(line, &cfg); err != nil {
		return cfg, 0, fmt.Errorf("the snapshot file's configuration: %v", err)
	}
	return cfg, int64(len(head) + len(line)), nil
}

// sameFile says whether a and b name the same file.
func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
