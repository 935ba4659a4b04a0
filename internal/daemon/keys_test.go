package daemon

import (
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/guest"
	"golang.org/x/crypto/ssh"
)

func newPublicKey(t *testing.T, comment string) (line, fp string) {
	t.Helper()
	_, signer, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	line = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if comment != "" {
		line += " " + comment
	}
	return line, ssh.FingerprintSHA256(signer.PublicKey())
}

func TestServer_Keys(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	alice := &client.Client{Host: f.srv.URL, Token: f.user}
	line, fp := newPublicKey(t, "ada@laptop")

	k, err := f.client.AddKey(ctx, "\n# my key\n"+line+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if k.Fingerprint != fp || k.Comment != "ada@laptop" || k.Type != "ssh-ed25519" || k.PublicKey != line || k.AddedAt.IsZero() {
		t.Errorf("AddKey = %+v", k)
	}
	t.Run("added twice is a conflict", func(t *testing.T) {
		for _, c := range []*client.Client{f.client, alice} {
			if _, err := c.AddKey(ctx, line); !isCode(err, api.CodeConflict) {
				t.Errorf("second add: %v", err)
			}
		}
	})
	t.Run("bad keys are 400", func(t *testing.T) {
		rk, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		weak, _ := ssh.NewPublicKey(&rk.PublicKey)
		short := string(ssh.MarshalAuthorizedKey(weak))
		other, _ := newPublicKey(t, "")
		for body, want := range map[string]string{
			"":      "no public key given",
			"hello": "not an SSH public key",
			"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----": "private key",
			`command="ls" ` + line: "key options",
			line + "\n" + other:    "more than one key",
			short:                  "1024 bits is too weak",
		} {
			_, err := f.client.AddKey(ctx, body)
			if !isCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), want) {
				t.Errorf("AddKey(%.30q) = %v, want 400 with %q", body, err, want)
			}
		}
	})
	t.Run("each token sees its own", func(t *testing.T) {
		keys, err := f.client.ListKeys(ctx)
		if err != nil || len(keys) != 1 || keys[0].Fingerprint != fp {
			t.Errorf("admin's keys = %+v, %v", keys, err)
		}
		keys, err = alice.ListKeys(ctx)
		if err != nil || len(keys) != 0 {
			t.Errorf("alice's keys = %+v, %v", keys, err)
		}
		if err := alice.RemoveKey(ctx, fp); !client.IsNotFound(err) {
			t.Errorf("alice removes admin's key: %v", err)
		}
	})
	t.Run("remove, any fingerprint", func(t *testing.T) {
		// Fingerprints hold '/' and '+'; some hold "//", which a path may not.
		for i := 0; i < 20; i++ {
			l, p := newPublicKey(t, "")
			if _, err := alice.AddKey(ctx, l); err != nil {
				t.Fatal(err)
			}
			if err := alice.RemoveKey(ctx, p); err != nil {
				t.Fatalf("remove %s: %v", p, err)
			}
		}
		if err := f.client.RemoveKey(ctx, strings.TrimPrefix(fp, "SHA256:")); err != nil {
			t.Errorf("remove without the prefix: %v", err)
		}
		if err := f.client.RemoveKey(ctx, fp); !client.IsNotFound(err) {
			t.Errorf("remove again: %v", err)
		}
	})
	t.Run("raw fingerprint with slashes in the path", func(t *testing.T) {
		l, p := newPublicKey(t, "")
		f.client.AddKey(ctx, l)
		req, _ := http.NewRequest(http.MethodDelete, f.srv.URL+"/v1/keys/"+p, nil)
		req.Header.Set("Authorization", "Bearer "+f.admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !strings.Contains(p, "//") && resp.StatusCode != http.StatusNoContent {
			t.Errorf("DELETE %s: %s", p, resp.Status)
		}
	})
}

func isCode(err error, code string) bool {
	ae, ok := err.(*api.Error)
	return ok && ae.Code == code
}
