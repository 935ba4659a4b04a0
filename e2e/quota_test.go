package e2e

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// seedUser stores a user of the allow-listed domain and a token of theirs in
// dataDir's store before the daemon opens it, as fcm login would have, and
// returns the token's secret.
func seedUser(t *testing.T, dataDir, id, email string) string {
	t.Helper()
	st, err := store.Open(filepath.Join(dataDir, "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	secret := store.NewSecret()
	err = st.Update(func(tx *store.Tx) error {
		if err := tx.PutUser(&store.User{ID: id, Issuer: "https://op.example", Subject: id, Email: email}); err != nil {
			return err
		}
		return tx.PutToken(secret, &store.Token{ID: store.NewTokenID(), Name: "fcm login", User: id})
	})
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// TestUsers_QuotaUnderConcurrentCreates (M7): 20 creates at once by one user
// with a quota of 3 VMs give exactly 3 VMs and 17 refusals (403
// quota_exceeded, saying what they have and what is allowed); the memory and
// vCPU quotas refuse a create beyond them in one clear line.
func TestUsers_QuotaUnderConcurrentCreates(t *testing.T) {
	const n = 20
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	secret := seedUser(t, dataDir, "u_0123456789ab", "dana@example.com")
	d := startDaemonHV(t, "qemu", dataDir, "--allow", "@example.com", "--boot-timeout", "5m",
		"--max-vms-per-user", "3", "--max-memory-per-user", "1024", "--max-cpus-per-user", "3")
	dana := []string{"FCM_HOST=http://" + daemonListen, "FCM_TOKEN=" + secret}

	outs := make([]string, n)
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], codes[i] = runFCM(t, t.TempDir(), dana, "create", "--memory", "256")
		}()
	}
	wg.Wait()
	created, refused := 0, 0
	for i := range n {
		switch {
		case codes[i] == 0 && strings.Contains(outs[i], "VM created: "):
			created++
		case codes[i] != 0 && strings.Contains(outs[i], "you have 3 VMs, the most this host allows per user (3, fcm daemon --max-vms-per-user)") &&
			strings.Count(strings.TrimSpace(outs[i]), "\n") == 0:
			refused++
		default:
			t.Errorf("create: exit %d:\n%s%s", codes[i], outs[i], consoleOf(outs[i]))
		}
	}
	work := t.TempDir()
	vms := d.vms(work)
	if created != 3 || refused != n-3 || len(vms) != 3 {
		t.Fatalf("%d created, %d refused for the quota, %d VMs on the host; want 3, 17, 3\n%s", created, refused, len(vms), tail(d.log(), 3000))
	}
	for name, v := range vms {
		if v.State != "running" || v.Owner != "dana@example.com" {
			t.Errorf("vm %s: %s, owner %q", name, v.State, v.Owner)
		}
	}
	if got := strings.Count(d.log(), "status=403"); got != n-3 {
		t.Errorf("the daemon logged %d answers 403 to the creates, want %d", got, n-3)
	}

	// With one destroyed, dana has 2 VMs, 512 MiB and 2 vCPUs of 3, 1024 MiB
	// and 3: a VM of 768 MiB or of 2 vCPUs is over, one of 512 MiB and 1 fits.
	for name := range vms {
		d.mustCLI(work, "destroy", name)
		break
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--memory", "768"}, "your VMs have 512 MiB of memory and this one asks for 768 MiB: this host allows 1024 MiB per user in all (fcm daemon --max-memory-per-user)"},
		{[]string{"--memory", "256", "--cpus", "2"}, "your VMs have 2 vCPUs and this one asks for 2: this host allows 3 vCPUs per user in all (fcm daemon --max-cpus-per-user)"},
	} {
		out, code := runFCM(t, work, dana, append([]string{"create"}, tt.args...)...)
		if code == 0 || !strings.Contains(out, tt.want) {
			t.Errorf("fcm create %v: exit %d:\n%s", tt.args, code, out)
		}
	}
	if left := d.vms(work); len(left) != 2 {
		t.Errorf("%d VMs after the refused creates, want 2", len(left))
	}
	for name := range d.vms(work) {
		d.mustCLI(work, "destroy", name)
	}
}
