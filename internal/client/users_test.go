package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
)

// The host comes from FCM_HOST, else ~/.fcm-host, else DefaultHost; a host
// file others can read is refused like a token file.
func TestFromEnv_HostPrecedence(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("FCM_TOKEN", "fcm_env")
	t.Setenv("FCM_HOST", "")
	path := filepath.Join(home, ".fcm-host")

	if c := FromEnv(); c.Host != DefaultHost || c.HostFile != "" || c.Err != nil {
		t.Errorf("nothing set: %+v", c)
	}
	os.WriteFile(path, []byte("https://fcm.example.com/\n"), 0o600)
	if c := FromEnv(); c.Host != "https://fcm.example.com" || c.HostFile != path || c.Err != nil {
		t.Errorf("~/.fcm-host: %+v", c)
	}
	t.Setenv("FCM_HOST", "https://other.example.org")
	if c := FromEnv(); c.Host != "https://other.example.org" || c.HostFile != "" || c.Err != nil {
		t.Errorf("FCM_HOST and ~/.fcm-host: %+v", c)
	}
	t.Setenv("FCM_HOST", "")
	os.Chmod(path, 0o644)
	c := FromEnv()
	if c.Err == nil || c.Err.Error() != "~/.fcm-host has mode 0644: run chmod 600 ~/.fcm-host" {
		t.Errorf("0644 host file: %v", c.Err)
	}
	if _, err := c.WhoAmI(context.Background()); err != c.Err {
		t.Errorf("a request with a refused host file: %v", err)
	}
}

// PollLogin tells pending (202), the result (200) and refusals (403, 410)
// apart, and never sends the client's token with a login request.
func TestPollLogin(t *testing.T) {
	polls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			t.Errorf("%s %s sent %q", r.Method, r.URL.Path, a)
		}
		var body struct {
			api.LoginPoll
			api.LoginStartRequest
		}
		json.NewDecoder(r.Body).Decode(&body)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v1/logins" && body.Port != 5555:
			t.Errorf("start sent %+v, want port 5555", body)
		case r.URL.Path == "/v1/logins":
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(api.LoginStart{ID: "l_1", URL: "https://fcm.example.com/login/l_1", Code: "WDJB-MJHT", PollToken: "p", Interval: 5})
		case r.URL.Path == "/v1/logins/gone/token":
			w.WriteHeader(http.StatusGone)
			json.NewEncoder(w).Encode(api.Error{Message: "the login expired", Code: api.CodeExpired})
		case body.PollToken != "p":
			w.WriteHeader(http.StatusForbidden)
			json.NewEncoder(w).Encode(api.Error{Message: "bob@example.com may not log in", Code: api.CodeNotAllowed})
		case polls == 0:
			polls++
			w.WriteHeader(http.StatusAccepted)
			json.NewEncoder(w).Encode(api.LoginStatus{Status: api.LoginPending})
		case body.Grant != "g":
			t.Errorf("poll sent grant %q", body.Grant)
		default:
			json.NewEncoder(w).Encode(api.LoginResult{Token: "fcm_new", User: api.User{Email: "alice@example.com"}})
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	c := &Client{Host: srv.URL, Token: "fcm_old"}
	start, err := c.StartLogin(ctx, api.LoginStartRequest{Port: 5555})
	if err != nil || start.Code != "WDJB-MJHT" || start.PollToken != "p" {
		t.Fatalf("StartLogin: %+v, %v", start, err)
	}
	if res, pending, err := c.PollLogin(ctx, "l_1", "p", "g"); res != nil || !pending || err != nil {
		t.Errorf("first poll: %+v %v %v, want pending", res, pending, err)
	}
	if res, pending, err := c.PollLogin(ctx, "l_1", "p", "g"); err != nil || pending || res.Token != "fcm_new" || res.User.Email != "alice@example.com" {
		t.Errorf("second poll: %+v %v %v, want the token", res, pending, err)
	}
	_, pending, err := c.PollLogin(ctx, "l_1", "wrong", "g")
	var ae *api.Error
	if pending || err == nil || !strings.Contains(err.Error(), "may not log in") || !errors.As(err, &ae) || ae.Code != api.CodeNotAllowed {
		t.Errorf("refused: %v %v", pending, err)
	}
	if _, _, err := c.PollLogin(ctx, "gone", "p", "g"); !IsLoginExpired(err) {
		t.Errorf("expired: %v", err)
	}
}

// RemoveUser says what to do with the VMs in the query, only when given.
func TestRemoveUser_Query(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		json.NewEncoder(w).Encode(api.RemoveUserResponse{})
	}))
	defer srv.Close()
	c := &Client{Host: srv.URL, Token: "fcm_admin"}
	c.RemoveUser(context.Background(), "alice@example.com", "")
	c.RemoveUser(context.Background(), "u_1", "keep")
	if strings.Join(got, "\n") != "DELETE /v1/users/alice@example.com\nDELETE /v1/users/u_1?vms=keep" {
		t.Errorf("requests:\n%s", strings.Join(got, "\n"))
	}
}
