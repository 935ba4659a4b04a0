package daemon

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/store"
)

// zitadelExample is zitadel/oidc's example OpenID provider
// (github.com/zitadel/oidc/v3/example/server, installed by make test-tools):
// $FCM_OIDC_EXAMPLE.
func zitadelExample(t *testing.T) string {
	t.Helper()
	p := os.Getenv("FCM_OIDC_EXAMPLE")
	if p == "" {
		t.Fatal("FCM_OIDC_EXAMPLE is not set: make test-tools installs zitadel/oidc's example server (see the Makefile)")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("FCM_OIDC_EXAMPLE: %v", err)
	}
	return p
}

// startZitadelExample runs the example provider on a free loopback port with
// redirectURI registered for its default clients ("web"/"secret" among
// them) and returns its issuer, http://localhost:<port>/.
func startZitadelExample(t *testing.T, redirectURI string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	var out bytes.Buffer
	cmd := exec.Command(zitadelExample(t))
	cmd.Env = append(os.Environ(), "PORT="+port, "REDIRECT_URI="+redirectURI)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("zitadel example server's output:\n%s", out.String())
		}
	})
	issuer := "http://localhost:" + port + "/"
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://127.0.0.1:" + port + "/.well-known/openid-configuration")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return issuer
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the zitadel example server did not answer on port %s: %v\n%s", port, err, out.String())
		}
	}
}

// TestLogin_ZitadelExampleClaimsFromUserInfo: zitadel/oidc's example
// provider keeps email and name out of a web client's ID token (OIDC Core
// 5.4); fcm reads them from UserInfo, and the sign-in succeeds.
func TestLogin_ZitadelExampleClaimsFromUserInfo(t *testing.T) {
	ln, base := listenLoopback(t)
	issuer := startZitadelExample(t, base+auth.CallbackPath)
	rig := startLoginRig(t, ln, auth.Config{Issuer: issuer, ClientID: "web", ClientSecret: "secret", PublicURL: base},
		[]string{"@zitadel.ch"}, browsertest.Resolve("localhost", "127.0.0.1"))
	ctx := ctxFor(t)
	page, err := rig.browser.Login(ctx, rig.url+"/login", "test-user@localhost", "verysecure")
	if err != nil {
		t.Fatal(err)
	}
	if page.URL != rig.url+"/" {
		t.Fatalf("after signing in at the zitadel example the browser is at %s (%d): %q", page.URL, page.Status, page.Text)
	}
	page, err = rig.browser.Open(ctx, rig.url+"/v1/whoami")
	if err != nil || page.Status != http.StatusOK || !strings.Contains(page.Text, `"email":"test-user@zitadel.ch"`) {
		t.Fatalf("whoami after the zitadel sign-in: %d %q %v", page.Status, page.Text, err)
	}
	var u *store.User
	rig.store.View(func(tx *store.Tx) (err error) { u, err = tx.UserBySubject(issuer, "id1"); return })
	if u == nil || u.Email != "test-user@zitadel.ch" || u.Name == "" {
		t.Fatalf("user made from the zitadel example's UserInfo: %+v", u)
	}
}

// TestLogin_UserInfoOfAnotherSubjectRefused: when the ID token has no email
// and UserInfo answers for another subject, the login is refused and nobody
// is made a user.
func TestLogin_UserInfoOfAnotherSubjectRefused(t *testing.T) {
	rig := newLoginRigWith(t, oidctest.Options{ClaimsInUserInfo: true}, "@example.com")
	ctx := ctxFor(t)

	// The right subject: the claims come from UserInfo.
	page, err := rig.browser.Login(ctx, rig.url+"/login", oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil || page.URL != rig.url+"/" {
		t.Fatalf("sign-in with claims only in UserInfo: %s %d %q %v", page.URL, page.Status, page.Text, err)
	}

	rig.provider.UserInfoSubject(oidctest.Bob.Subject)
	b := browsertest.New(t)
	page, err = b.Login(ctx, rig.url+"/login", oidctest.Carol.Username, oidctest.Carol.Password)
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusBadRequest || !strings.Contains(page.Error, "UserInfo is about another subject") {
		t.Fatalf("UserInfo for bob in carol's login: %d %q", page.Status, page.Text)
	}
	rig.store.View(func(tx *store.Tx) error {
		users, _ := tx.Users()
		for _, u := range users {
			if u.Subject == oidctest.Bob.Subject || u.Subject == oidctest.Carol.Subject {
				t.Errorf("a user was made from another subject's UserInfo: %+v", u)
			}
		}
		return nil
	})
}
