package daemon

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/console"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/guest/guesttest"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// sshGuests connects every VM to one in-process sshd.
type sshGuests struct{ s *guesttest.Server }

func (g sshGuests) Client(*store.VM) (*guest.Client, error) {
	return &guest.Client{Addr: g.s.Addr, Signer: g.s.Signer, HostKey: g.s.HostKey}, nil
}

// consoleFixture is a daemon whose running VM alice-vm (id aaaa1111) has a
// session fern, served by an in-process sshd with a stand-in tmux.
func consoleFixture(t *testing.T) (*Server, *httptest.Server, string) {
	g := guesttest.Start(t, func(cmd string, ch ssh.Channel, _ bool) uint32 {
		switch {
		case strings.HasPrefix(cmd, "tmux list-sessions"):
			fmt.Fprint(ch, "fern 1700000000 0\n")
		case strings.Contains(cmd, "tmux new-session -A"):
			fmt.Fprint(ch, "/dev/pts/1\r\n")
			guesttest.Echo(ch)
		case strings.HasPrefix(cmd, "tmux has-session"):
			return 1
		}
		return 0
	})
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	admin := store.NewSecret()
	vm := &store.VM{ID: "aaaa1111", Name: "alice-vm", Owner: "admin", State: "running", IP: "172.16.0.50", Port: 3000}
	st.Update(func(tx *store.Tx) error {
		tx.PutToken(admin, &store.Token{ID: "admin", Admin: true})
		return tx.InsertVM(vm)
	})
	s := &Server{Store: st, Guests: sshGuests{g}, Version: "test", Hypervisor: "qemu",
		VMs: &fakeVMs{stop: func(context.Context, string) (*store.VM, error) { return vm, nil }}}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return s, srv, admin
}

func dialAttach(ctx context.Context, srv *httptest.Server, token, origin string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{"Authorization": {"Bearer " + token}}
	if origin != "" {
		h.Set("Origin", origin)
	}
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/vms/alice-vm/sessions/fern/attach", &websocket.DialOptions{HTTPHeader: h})
}

// TestSessions_AttachOrigin: a page on another site cannot open a console; the
// CLI (no Origin) and the daemon's own origin can.
func TestSessions_AttachOrigin(t *testing.T) {
	_, srv, token := consoleFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ws, resp, err := dialAttach(ctx, srv, token, "https://evil.example"); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		if ws != nil {
			ws.CloseNow()
		}
		t.Errorf("attach from another origin: %v (%v), want 403", err, resp)
	}
	for _, origin := range []string{"", srv.URL} {
		ws, _, err := dialAttach(ctx, srv, token, origin)
		if err != nil {
			t.Errorf("attach with Origin %q: %v", origin, err)
			continue
		}
		if _, _, err := ws.Read(ctx); err != nil {
			t.Errorf("attach with Origin %q: no hello: %v", origin, err)
		}
		ws.CloseNow()
	}
}

// TestSessions_StopClosesConsoles: hubs are keyed by the VM's id, and stopping
// the VM lets its consoles go, telling their clients why.
func TestSessions_StopClosesConsoles(t *testing.T) {
	s, srv, token := consoleFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := dialAttach(ctx, srv, token, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if _, _, err := ws.Read(ctx); err != nil {
		t.Fatal(err)
	}
	if n, hub := s.consoles().Attached(console.Key("aaaa1111", "fern")); n != 1 || !hub {
		t.Fatalf("hub by VM id: %d clients, hub %v", n, hub)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/v1/vms/alice-vm/stop", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stop: %v %v", resp, err)
	}
	resp.Body.Close()
	for {
		_, _, err := ws.Read(ctx)
		if err == nil {
			continue
		}
		if websocket.CloseStatus(err) != websocket.StatusGoingAway || !strings.Contains(err.Error(), "the VM stopped") {
			t.Errorf("console of the stopped VM: %v, want a going-away close saying the VM stopped", err)
		}
		break
	}
	if _, hub := s.consoles().Attached(console.Key("aaaa1111", "fern")); hub {
		t.Error("the stopped VM's hub is still there")
	}
}
