package daemon

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/store"
)

// TestLive_RevocationEndsConsoles (L1): a user's open console WebSocket ends
// within seconds, saying why, when the user is denied or removed, when the
// token is revoked (by the API, or by a path that only deletes it, as a web
// logout does: the sweep finds it), or when the VM is given to another.
func TestLive_RevocationEndsConsoles(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(t *testing.T, s *Server, url, admin string)
		want   string
	}{
		{"users deny", func(t *testing.T, s *Server, url, admin string) {
			call(t, url, admin, "POST", "/v1/users/deny", `{"pattern":"dana@example.com"}`, http.StatusOK)
		}, "access revoked: the user may no longer use this host"},
		{"token revoke", func(t *testing.T, s *Server, url, admin string) {
			call(t, url, admin, "DELETE", "/v1/tokens/t_dana", "", http.StatusNoContent)
		}, "access revoked: the token was revoked"},
		{"users rm", func(t *testing.T, s *Server, url, admin string) {
			call(t, url, admin, "DELETE", "/v1/users/dana@example.com?vms=keep", "", http.StatusOK)
		}, "access revoked"},
		{"token deleted elsewhere", func(t *testing.T, s *Server, url, admin string) {
			s.Store.Update(func(tx *store.Tx) error {
				_, err := tx.DeleteTokens(func(tok *store.Token) bool { return tok.ID == "t_dana" })
				return err
			})
		}, "access revoked: the token was revoked"},
		{"vm changes hands", func(t *testing.T, s *Server, url, admin string) {
			s.Store.UpdateVM("alice-vm", func(v *store.VM) error { v.Owner = "admin"; return nil })
		}, "the VM changed hands"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, srv, admin := consoleFixture(t)
			dana := store.NewSecret()
			err := s.Store.Update(func(tx *store.Tx) error {
				tx.PutUser(&store.User{ID: "u_dana", Email: "dana@example.com"})
				tx.SetAccess("@example.com", true)
				return tx.PutToken(dana, &store.Token{ID: "t_dana", Name: "fcm login", User: "u_dana"})
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Store.UpdateVM("alice-vm", func(v *store.VM) error { v.Owner = "u_dana"; return nil }); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ws, _, err := dialAttach(ctx, srv, dana, "")
			if err != nil {
				t.Fatal(err)
			}
			defer ws.CloseNow()
			if _, _, err := ws.Read(ctx); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			tt.revoke(t, s, srv.URL, admin)
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			for {
				_, _, err := ws.Read(rctx)
				if err == nil {
					continue
				}
				if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("dana's console after %s: %v (after %s), want a close saying %q", tt.name, err, time.Since(start).Round(time.Millisecond), tt.want)
				}
				break
			}
			t.Logf("closed %s after %s", tt.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// call sends an API request with token and fails the test unless it gets
// status.
func call(t *testing.T, url, token, method, path, body string, status int) {
	t.Helper()
	req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatal(errors.New(method + " " + path + ": " + resp.Status))
	}
}
