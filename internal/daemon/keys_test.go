package daemon

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

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

// addProved adds body (k's public key, maybe with text around it) as fcm
// keys add does: a challenge, signed with k by ssh-keygen.
func addProved(t *testing.T, c *client.Client, k sshKey, body string) (*api.Key, error) {
	t.Helper()
	ch, err := c.KeyChallenge(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if ch.Namespace != c.KeyNamespace() || time.Until(ch.ExpiresAt) < 4*time.Minute {
		t.Errorf("challenge %+v, want namespace %q, 5 minutes", ch, c.KeyNamespace())
	}
	return c.AddKey(t.Context(), api.AddKeyRequest{PublicKey: body, Challenge: ch.Challenge, Signature: k.sign(t, ch.Namespace, ch.Challenge)})
}

func TestServer_Keys(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	alice := &client.Client{Host: f.srv.URL, Token: f.user}
	key := newSSHKey(t, "ed25519", "ada@laptop")

	k, err := addProved(t, f.client, key, "\n# my key\n"+key.line+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if k.Fingerprint != key.fp || k.Comment != "ada@laptop" || k.Type != "ssh-ed25519" || k.PublicKey != key.line || k.AddedAt.IsZero() {
		t.Errorf("AddKey = %+v", k)
	}
	t.Run("added twice is a conflict, told after the proof", func(t *testing.T) {
		// alice holds the same private key (a shared key): she proved it.
		for c, want := range map[*client.Client]string{
			f.client: "key " + key.fp + " is already added to your account",
			alice:    "key " + key.fp + " is already added to another account on this host; remove it there first",
		} {
			if _, err := addProved(t, c, key, key.line); !isCode(err, api.CodeConflict) || !strings.Contains(err.Error(), want) {
				t.Errorf("second add: %v, want 409 with %q", err, want)
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
		line := key.line
		for body, want := range map[string]string{
			"":      "no public key given",
			"hello": "not an SSH public key",
			"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----": "private key",
			`command="ls" ` + line: "key options",
			line + "\n" + other:    "more than one key",
			short:                  "1024 bits is too weak",
		} {
			_, err := f.client.AddKey(ctx, api.AddKeyRequest{PublicKey: body})
			if !isCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), want) {
				t.Errorf("AddKey(%.30q) = %v, want 400 with %q", body, err, want)
			}
		}
	})
	t.Run("each token sees its own", func(t *testing.T) {
		keys, err := f.client.ListKeys(ctx)
		if err != nil || len(keys) != 1 || keys[0].Fingerprint != key.fp {
			t.Errorf("admin's keys = %+v, %v", keys, err)
		}
		keys, err = alice.ListKeys(ctx)
		if err != nil || len(keys) != 0 {
			t.Errorf("alice's keys = %+v, %v", keys, err)
		}
		if err := alice.RemoveKey(ctx, key.fp); !client.IsNotFound(err) {
			t.Errorf("alice removes admin's key: %v", err)
		}
	})
	t.Run("remove, any fingerprint", func(t *testing.T) {
		// Fingerprints hold '/' and '+'; some hold "//", which a path may not.
		for i := 0; i < 20; i++ {
			k := newSSHKey(t, "ed25519", "")
			if _, err := addProved(t, alice, k, k.line); err != nil {
				t.Fatal(err)
			}
			if err := alice.RemoveKey(ctx, k.fp); err != nil {
				t.Fatalf("remove %s: %v", k.fp, err)
			}
		}
		if err := f.client.RemoveKey(ctx, strings.TrimPrefix(key.fp, "SHA256:")); err != nil {
			t.Errorf("remove without the prefix: %v", err)
		}
		if err := f.client.RemoveKey(ctx, key.fp); !client.IsNotFound(err) {
			t.Errorf("remove again: %v", err)
		}
	})
	t.Run("raw fingerprint with slashes in the path", func(t *testing.T) {
		k := newSSHKey(t, "ed25519", "")
		if _, err := addProved(t, f.client, k, k.line); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodDelete, f.srv.URL+"/v1/keys/"+k.fp, nil)
		req.Header.Set("Authorization", "Bearer "+f.admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !strings.Contains(k.fp, "//") && resp.StatusCode != http.StatusNoContent {
			t.Errorf("DELETE %s: %s", k.fp, resp.Status)
		}
	})
}

func isCode(err error, code string) bool {
	ae, ok := err.(*api.Error)
	return ok && ae.Code == code
}

// TestServer_AddKeyNeedsProof: an add without a valid signature by the key
// over a fresh challenge of the caller's is refused (400), and the answer is
// the same whether or not the key is registered (to someone else): no
// squatting, and no oracle of who has which key.
func TestServer_AddKeyNeedsProof(t *testing.T) {
	f := newFixture(t)
	alice := &client.Client{Host: f.srv.URL, Token: f.user}
	registered := newSSHKey(t, "ed25519", "admin@laptop")
	if _, err := addProved(t, f.client, registered, registered.line); err != nil {
		t.Fatal(err)
	}
	fresh := newSSHKey(t, "ed25519", "admin@laptop")
	mine := newSSHKey(t, "ed25519", "alice@laptop") // alice's own, which she can sign with
	challenge := func(c *client.Client) api.KeyChallenge {
		ch, err := c.KeyChallenge(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return *ch
	}
	// Each attempt is alice's, at a key that is not hers; where it carries a
	// signature by that key, read it as one she got some other way.
	attempts := map[string]func(target sshKey) api.AddKeyRequest{
		"no proof": func(k sshKey) api.AddKeyRequest { return api.AddKeyRequest{PublicKey: k.line} },
		"no signature": func(k sshKey) api.AddKeyRequest {
			return api.AddKeyRequest{PublicKey: k.line, Challenge: challenge(alice).Challenge}
		},
		"a made-up challenge": func(k sshKey) api.AddKeyRequest {
			c := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
			return api.AddKeyRequest{PublicKey: k.line, Challenge: c, Signature: k.sign(t, alice.KeyNamespace(), c)}
		},
		"another key's signature": func(k sshKey) api.AddKeyRequest {
			ch := challenge(alice)
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: mine.sign(t, ch.Namespace, ch.Challenge)}
		},
		"wrong namespace": func(k sshKey) api.AddKeyRequest {
			ch := challenge(alice)
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: k.sign(t, "fcm-keys-add@elsewhere", ch.Challenge)}
		},
		"wrong challenge": func(k sshKey) api.AddKeyRequest {
			ch, old := challenge(alice), challenge(alice)
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: k.sign(t, ch.Namespace, old.Challenge)}
		},
		"tampered message": func(k sshKey) api.AddKeyRequest {
			ch := challenge(alice)
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: k.sign(t, ch.Namespace, ch.Challenge+"x")}
		},
		"reused challenge": func(k sshKey) api.AddKeyRequest {
			ch := challenge(alice)
			if _, err := alice.AddKey(t.Context(), api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: "bad"}); !isCode(err, api.CodeBadRequest) {
				t.Errorf("a bad signature: %v", err)
			}
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: k.sign(t, ch.Namespace, ch.Challenge)}
		},
		"the admin's challenge": func(k sshKey) api.AddKeyRequest {
			ch := challenge(f.client)
			return api.AddKeyRequest{PublicKey: k.line, Challenge: ch.Challenge, Signature: k.sign(t, ch.Namespace, ch.Challenge)}
		},
	}
	for name, attempt := range attempts {
		t.Run(name, func(t *testing.T) {
			var answers []string
			for _, k := range []sshKey{registered, fresh} {
				status, body := postKey(t, f.srv.URL, f.user, attempt(k))
				body = strings.ReplaceAll(body, k.fp, "<fp>")
				if status != http.StatusBadRequest || !strings.Contains(body, `"code":"bad_request"`) {
					t.Errorf("%s: %d %s, want 400 bad_request", k.fp, status, body)
				}
				if strings.Contains(body, "already") || strings.Contains(body, "account") {
					t.Errorf("the refusal speaks of the key's record: %s", body)
				}
				answers = append(answers, body)
			}
			if answers[0] != answers[1] {
				t.Errorf("a registered key and a fresh one answer differently:\n%s\n%s", answers[0], answers[1])
			}
			t.Logf("%s", answers[0])
		})
	}
	keys, err := alice.ListKeys(t.Context())
	if err != nil || len(keys) != 0 {
		t.Errorf("alice has keys: %+v, %v", keys, err)
	}
	keys, err = f.client.ListKeys(t.Context())
	if err != nil || len(keys) != 1 || keys[0].Fingerprint != registered.fp {
		t.Errorf("the admin's keys: %+v, %v", keys, err)
	}
	// With the proof, alice's own key is added.
	if _, err := addProved(t, alice, mine, mine.line); err != nil {
		t.Errorf("alice adds her key: %v", err)
	}
}

// postKey sends POST /v1/keys and returns the status and body.
func postKey(t *testing.T, url, token string, req api.AddKeyRequest) (int, string) {
	t.Helper()
	body, _ := json.Marshal(req)
	r, _ := http.NewRequest(http.MethodPost, url+"/v1/keys", bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}
