package vm

import (
	"fmt"
	"os"
	"syscall"

	"github.com/fcmhost/fcm/internal/store"
)

// Step is one step of an operation as the op log records it: each is written
// to the store before its side effect, so a daemon killed after it can finish
// or undo the operation on restart.
type Step struct {
	Op   string // create, start, stop, destroy
	Name string
}

func (s Step) String() string { return s.Op + ":" + s.Name }

// Steps lists every step every operation records, in order. record refuses a
// step missing here, so a new step cannot escape the crash-table test, which
// kills the daemon at each of them.
var Steps = []Step{
	{"create", stepLease}, // the op, the VM record and its lease, in one transaction,
	{"create", stepDir},   // with this step
	{"create", stepNetwork},
	{"create", stepBoot},    // in one transaction with network
	{"start", stepStarting}, // the op, and the VM marked starting
	{"start", stepNetwork},
	{"start", stepBoot},         // in one transaction with network
	{"restart", stepRestarting}, // the daemon's own start of a VM that died or whose host restarted
	{"restart", stepNetwork},
	{"restart", stepBoot},
	{"stop", stepStopping}, // the op, and the VM marked stopping
	{"stop", stepHalt},
	{"stop", stepUnplug},
	{"suspend", stepSuspending}, // the op, and the VM marked suspending
	{"suspend", stepSave},       // device state written, hypervisor ended
	{"wake", stepWaking},        // the op, and the VM marked waking
	{"wake", stepNetwork},
	{"wake", stepRestore},             // a hypervisor restores the state, paused
	{"wake", stepCont},                // the guest runs on: its suspend image is spent
	{"checkpoint", stepCheckpointing}, // the op, and the checkpoint's number taken
	{"checkpoint", stepPause},         // the guest paused for the copy: recovery lets it run
	{"restore", stepRestoring},        // the op, and the VM marked stopping (after its undo checkpoint)
	{"restore", stepKill},             // its hypervisor killed
	{"restore", stepSwap},             // the checkpoint's disk copied beside its own and renamed over it
	{"destroy", stepDestroying},       // the op
	{"destroy", stepKill},
	{"destroy", stepUnplug},
	{"destroy", stepRemoveDir},
	{"destroy", stepRelease},
}

// Steps of operations, recorded before they act.
const (
	stepLease         = "lease"         // address leased and VM record made (one transaction)
	stepDir           = "dir"           // the VM's directory, disk and keys
	stepNetwork       = "network"       // tap and nft element
	stepBoot          = "boot"          // hypervisor started
	stepStarting      = "starting"      // start recorded
	stepStopping      = "stopping"      // stop recorded
	stepRestarting    = "restarting"    // restart recorded
	stepSuspending    = "suspending"    // suspend recorded
	stepSave          = "save"          // the guest paused and its state written
	stepWaking        = "waking"        // wake recorded
	stepRestore       = "restore"       // a hypervisor started on the saved state
	stepCont          = "cont"          // the restored guest let run
	stepDestroying    = "destroying"    // destroy recorded
	stepCheckpointing = "checkpointing" // checkpoint recorded, its number taken
	stepPause         = "pause"         // the guest paused for a copy of its disk
	stepRestoring     = "restoring"     // restore recorded
	stepSwap          = "swap"          // a checkpoint's disk put in place of the VM's
	stepHalt          = "halt"          // hypervisor powered off (killed after the stop timeout)
	stepUnplug        = "unplug"        // tap and nft element removed
	stepKill          = "kill"          // hypervisor killed
	stepRemoveDir     = "remove-dir"    // the VM's directory and disk removed
	stepRelease       = "release"       // lease, record and op removed
)

func isStep(op, name string) bool {
	for _, s := range Steps {
		if s.Op == op && s.Name == name {
			return true
		}
	}
	return false
}

// CrashEnv names a TEST-ONLY hook: with FCM_TEST_CRASH_AT=<op>:<step> (a Step)
// in its environment the daemon SIGKILLs itself right after the op log records
// that step, before the step's side effect. The crash-table end-to-end test
// uses it to prove a restart cleans up after a crash at every step; nothing
// sets it in production.
const CrashEnv = "FCM_TEST_CRASH_AT"

// crashPoint is where the test-only hook fires.
func (m *Manager) crashPoint(op, step string) {
	if m.crashAt != "" && m.crashAt == op+":"+step {
		m.log.Warn("test hook: killing the daemon", "env", CrashEnv, "at", m.crashAt)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the kill is asynchronous; never run the side effect
	}
}

// record appends steps to op in the store, in one transaction, before the
// first of them acts. Recording a step early is safe: undoing one that never
// acted finds nothing to undo.
func (m *Manager) record(op *store.Op, steps ...string) error {
	for _, step := range steps {
		if !isStep(op.Kind, step) {
			return fmt.Errorf("internal error: step %s:%s is missing from vm.Steps", op.Kind, step)
		}
	}
	op.Steps = append(op.Steps, steps...)
	if err := m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutOp(op) }); err != nil {
		return err
	}
	for _, step := range steps {
		m.crashPoint(op.Kind, step)
	}
	return nil
}
