package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/store"
)

// TestLogin_PhishedLinkGivesTheAttackerNothing: device-code phishing (RFC
// 8628 5.4). The attacker starts fcm login on their machine and sends the
// victim its URL; the victim signs in at the real provider in a real browser
// and, worst case, confirms despite the page naming the attacker's machine.
// The browser takes the grant to its own loopback (where the attacker's CLI
// is not), or shows a code the attacker never sees: every poll of the
// attacker's stays pending or is refused, and no token is made for the
// victim. Guessing ends the login.
func TestLogin_PhishedLinkGivesTheAttackerNothing(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	tokens := func() int {
		var n int
		rig.store.View(func(tx *store.Tx) error { toks, _ := tx.Tokens(); n = len(toks); return nil })
		return n
	}
	before := tokens()

	for _, mode := range []string{"loopback", "typed code"} {
		// The attacker's CLI listens on the attacker's machine: on the
		// victim's, nothing answers at that port.
		var port int
		if mode == "loopback" {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		}
		// The attacker is elsewhere: their request reaches the daemon
		// through Caddy, which says so in X-Forwarded-For.
		start, err := startLoginFrom(ctx, rig.url, "192.0.2.66", api.LoginStartRequest{Port: port, Hostname: "attacker-box"})
		if err != nil {
			t.Fatal(err)
		}
		page, err := rig.browser.Login(ctx, start.URL, oidctest.Alice.Username, oidctest.Alice.Password)
		if err != nil {
			t.Fatal(err)
		}
		if page.Host != "attacker-box" || !strings.Contains(page.Text, "If someone sent you this link") ||
			!strings.Contains(page.Text, "This browser is at 127.0.0.1, but the login was started from 192.0.2.66") {
			t.Fatalf("%s: the confirm page does not name the login's machine or warn: %q", mode, page.Text)
		}
		page, err = rig.browser.Confirm(ctx)
		if mode == "loopback" && (err == nil || !strings.Contains(err.Error(), "ERR_CONNECTION_REFUSED")) {
			t.Fatalf("%s: after confirming, the victim's browser should find nothing at its own 127.0.0.1:%d: %+v %v", mode, port, page, err)
		}
		if mode == "typed code" && (err != nil || page.Grant == "" || !strings.Contains(page.Text, "Never give this code to anyone")) {
			t.Fatalf("%s: after confirming: %+v %v", mode, page, err)
		}

		// The attacker polls as their CLI does: pending, again and again.
		for range 5 {
			res, pending, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, "")
			if res != nil || !pending || err != nil {
				t.Fatalf("%s: the attacker's poll: %+v %v %v, want pending", mode, res, pending, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Guessing the grant ends the login.
		for i := range 5 {
			res, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, "BCDF-GHJK")
			if res != nil || err == nil {
				t.Fatalf("%s: guess #%d got %+v", mode, i+1, res)
			}
		}
		if res, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, page.Grant); res != nil || apiCode(err) != api.CodeExpired {
			t.Fatalf("%s: after guessing, even the right grant: %+v %v, want expired", mode, res, err)
		}
	}
	if n := tokens(); n != before {
		t.Fatalf("%d tokens made by phished logins", n-before)
	}
}

// startLoginFrom starts a login as a client at addr would through Caddy
// (X-Forwarded-For from loopback).
func startLoginFrom(ctx context.Context, base, addr string, req api.LoginStartRequest) (*api.LoginStart, error) {
	body, _ := json.Marshal(req)
	r, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/logins", bytes.NewReader(body))
	r.Header.Set("X-Forwarded-For", addr)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("POST /v1/logins: %d", resp.StatusCode)
	}
	var start api.LoginStart
	return &start, json.NewDecoder(resp.Body).Decode(&start)
}
