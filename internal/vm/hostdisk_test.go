package vm

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/sys/unix"
)

// pausingInstance is a hypervisor whose run state the test sets, as QEMU's
// query-status reports it; Resume makes it run.
type pausingInstance struct {
	mu      sync.Mutex
	state   string
	resumes int
	pauses  int
}

var _ vmm.Pauser = (*pausingInstance)(nil)

func (p *pausingInstance) PID() int                       { return 42 }
func (p *pausingInstance) Shutdown(context.Context) error { return nil }
func (p *pausingInstance) Kill() error                    { return nil }
func (p *pausingInstance) Wait(context.Context) error     { return nil }
func (p *pausingInstance) Running() bool                  { return true }
func (p *pausingInstance) RunState(context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, nil
}
func (p *pausingInstance) Pause(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state, p.pauses = "paused", p.pauses+1
	return nil
}

func (p *pausingInstance) Resume(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state, p.resumes = "running", p.resumes+1
	return nil
}

// TestCheckHostDisk: a running VM whose hypervisor paused it on a host I/O
// error is recorded paused with its reason and an event; it is resumed only
// once more than the reserve is free, and recorded running again. A VM an
// operation is busy with is left alone.
func TestCheckHostDisk(t *testing.T) {
	m, _, _ := testManager(t)
	m.cfg.DiskReserve = 1 << 30
	free := int64(0)
	m.freeSpace = func(string) (int64, error) { return free, nil }
	vm := addVM(t, m, "full", "aaaa1111", api.StateRunning)
	inst := &pausingInstance{state: "running"}
	m.setInstance(vm.ID, inst)
	other := addVM(t, m, "fine", "bbbb2222", api.StateRunning)
	m.setInstance(other.ID, &pausingInstance{state: "running"})
	ctx := context.Background()

	m.CheckHostDisk(ctx)
	if got := getVM(t, m, "full"); got.State != api.StateRunning || len(got.Events) != 0 {
		t.Fatalf("a running guest was recorded %s %v", got.State, got.Events)
	}

	inst.state = vmm.RunStateIOError
	m.begin("full", "stopping") // busy: left to the operation
	m.CheckHostDisk(ctx)
	if got := getVM(t, m, "full"); got.State != api.StateRunning {
		t.Fatalf("a busy vm was recorded %s", got.State)
	}
	m.end("full")

	m.CheckHostDisk(ctx)
	got := getVM(t, m, "full")
	if got.State != api.StatePaused || got.Reason != ReasonHostDiskFull || len(got.Events) != 1 || got.Events[0].Kind != "paused" {
		t.Fatalf("after an io-error: %s (%q), events %v", got.State, got.Reason, got.Events)
	}
	if got := getVM(t, m, "fine"); got.State != api.StateRunning {
		t.Errorf("the other vm is %s", got.State)
	}

	free = 1 << 30 // at the reserve, not above it
	m.CheckHostDisk(ctx)
	if got := getVM(t, m, "full"); got.State != api.StatePaused || inst.resumes != 0 {
		t.Fatalf("resumed with only the reserve free: %s, %d resumes", got.State, inst.resumes)
	}

	free = 3 << 30
	m.CheckHostDisk(ctx)
	got = getVM(t, m, "full")
	if got.State != api.StateRunning || got.Reason != "" || inst.resumes != 1 || len(got.Events) != 2 || got.Events[1].Kind != "resumed" {
		t.Fatalf("with space back: %s (%q), %d resumes, events %v", got.State, got.Reason, inst.resumes, got.Events)
	}
	m.CheckHostDisk(ctx)
	if inst.resumes != 1 || len(getVM(t, m, "full").Events) != 2 {
		t.Error("a running vm was resumed again")
	}
}

// TestKeepStoreReserve: the store's file keeps StoreReserve allocated past
// its end, its size unchanged, and takes it again once the store has grown
// into it.
func TestKeepStoreReserve(t *testing.T) {
	m, _, _ := testManager(t)
	path := filepath.Join(m.cfg.DataDir, StoreFile)
	stat := func() (size, allocated int64) {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Size, st.Blocks * 512
	}
	size0, _ := stat()
	m.KeepStoreReserve()
	size, allocated := stat()
	if size != size0 || allocated < size+StoreReserve {
		t.Fatalf("after KeepStoreReserve: size %d (was %d), %d allocated, want at least %d", size, size0, allocated, size+StoreReserve)
	}
	// The store grows (bolt truncates the file larger) into its reserve.
	if err := os.Truncate(path, size+StoreReserve-1<<20); err != nil {
		t.Fatal(err)
	}
	m.KeepStoreReserve()
	size, allocated = stat()
	if allocated < size+StoreReserve {
		t.Fatalf("after growing: size %d, %d allocated, want at least %d", size, allocated, size+StoreReserve)
	}
}
