package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

func TestBackoff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for i, w := range want {
		if got := backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := backoff(40); got != BackoffMax {
		t.Errorf("backoff(40) = %s, want the cap %s", got, BackoffMax)
	}
}

// TestDied_CrashedAfterFiveInTenMinutes: deaths within ten minutes back off
// 1, 2, 4, 8 s; the fifth is crashed with the count and the cause; deaths
// older than the window are forgotten; a VM its owner wants stopped stops.
func TestDied_CrashedAfterFiveInTenMinutes(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	v := &store.VM{Name: "web", State: api.StateRunning, Desired: api.DesiredRunning}
	for i := 1; i <= 4; i++ {
		died("out of memory", now)(v)
		if v.State != api.StateRestarting || !v.RestartAt.Equal(now.Add(backoff(i))) {
			t.Fatalf("death %d: %s, restart at %s; want restarting after %s", i, v.State, v.RestartAt, backoff(i))
		}
		now = now.Add(time.Minute)
	}
	died("out of memory", now)(v)
	if v.State != api.StateCrashed || v.Reason != "crashed 5 times in 10 min: out of memory; `fcm start` tries again" {
		t.Fatalf("fifth death: %s (%s)", v.State, v.Reason)
	}
	if last := v.Events[len(v.Events)-1]; last.Kind != "crashed" {
		t.Errorf("last event %+v, want crashed", last)
	}

	// Eleven minutes on, the deaths have left the window.
	v.State = api.StateRunning
	died("killed", now.Add(11*time.Minute))(v)
	if v.State != api.StateRestarting || len(v.Deaths) != 1 {
		t.Errorf("after a quiet window: %s with %d deaths, want restarting with 1", v.State, len(v.Deaths))
	}

	v = &store.VM{Name: "off", State: api.StateRunning, Desired: api.DesiredStopped}
	died("killed", now)(v)
	if v.State != api.StateStopped {
		t.Errorf("a vm its owner wants stopped: %s after a death, want stopped", v.State)
	}
}

// TestExitOf reads why a hypervisor ended from its cgroup, its console since
// the last boot, and its exit status.
func TestExitOf(t *testing.T) {
	m, _, _ := testManager(t)
	const id = "aaaa1111"
	os.MkdirAll(m.dir(id), 0o700)
	console := filepath.Join(m.dir(id), "console.log")
	for _, tc := range []struct {
		console, status, kind, cause string
	}{
		{"Linux version 6.1\nfcm-init: shutdown: poweroff (user defined signal 2)\n", "exited with status 0", "poweroff", "the guest powered itself off"},
		{"Linux version 6.1\nfcm-init: shutdown: reboot (terminated)\n", "exited with status 0", "reboot", "the guest rebooted itself"},
		// An earlier boot's poweroff is not this boot's.
		{"Linux version 6.1\nfcm-init: shutdown: poweroff (interrupt)\nLinux version 6.1\nKernel panic - not syncing: Attempted to kill init!\n", "exited with status 0", "died", "guest kernel panic: Kernel panic - not syncing: Attempted to kill init!"},
		// A signal wins over what the console says.
		{"Linux version 6.1\nfcm-init: shutdown: poweroff (user defined signal 2)\n", "killed by signal 9 (SIGKILL)", "died", "its hypervisor (fake) killed by signal 9 (SIGKILL)"},
		{"", "", "died", "its hypervisor (fake) exited"},
	} {
		os.WriteFile(console, []byte(tc.console), 0o600)
		e := m.exitOf(id, &exitedInstance{exit: tc.status})
		if e.kind != tc.kind || e.cause != tc.cause {
			t.Errorf("console %q, status %q: %s (%s), want %s (%s)", tc.console, tc.status, e.kind, e.cause, tc.kind, tc.cause)
		}
	}
}

type exitedInstance struct {
	fakeInstance
	exit string
}

func (e *exitedInstance) Exit() string { return e.exit }

// TestHeal_RestartsWhenDue: Heal boots a VM in state restarting once its
// backoff is over, keeping its desired state; a failing boot is one more
// death.
func TestHeal_RestartsWhenDue(t *testing.T) {
	m, d, _ := testManager(t)
	v := addVM(t, m, "web", "aaaa1111", api.StateRestarting)
	m.cfg.Store.UpdateVM("web", func(v *store.VM) error {
		v.Desired, v.RestartAt = api.DesiredRunning, time.Now().Add(300*time.Millisecond)
		v.Deaths = []time.Time{time.Now()}
		return nil
	})
	_ = v
	d.start = func(vmm.Spec) (vmm.Instance, error) { return nil, errors.New("kvm: gone") }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Heal(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur := getVM(t, m, "web")
		if len(cur.Deaths) == 2 && cur.State == api.StateRestarting {
			if !strings.Contains(cur.Reason, "kvm: gone") || !strings.Contains(cur.Reason, "restart in 2s") {
				t.Errorf("after a failed restart: %s", cur.Reason)
			}
			if cur.Desired != api.DesiredRunning {
				t.Errorf("desired %q after a restart, want running", cur.Desired)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart within 10 s: %s (%s), %d deaths, %d starts", cur.State, cur.Reason, len(cur.Deaths), d.starts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
