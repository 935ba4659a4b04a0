package daemon

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/client"
	"golang.org/x/crypto/ssh"
)

// sshKey is a key pair ssh-keygen made in a temporary directory.
type sshKey struct {
	path string // the private key; the public one is path.pub
	line string // the authorized_keys line, with its comment
	fp   string
	pub  ssh.PublicKey
}

// newSSHKey makes a key of type typ (ed25519, rsa) with ssh-keygen.
func newSSHKey(t *testing.T, typ, comment string) sshKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_"+typ)
	args := []string{"-q", "-t", typ, "-N", "", "-C", comment, "-f", path}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
	}
	data, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return sshKey{path: path, line: strings.TrimSpace(string(data)), fp: ssh.FingerprintSHA256(pub), pub: pub}
}

// sign is `ssh-keygen -Y sign` of message in namespace by the key, with its
// extra options (such as -O hashalg=sha256).
func (k sshKey) sign(t *testing.T, namespace, message string, opts ...string) string {
	t.Helper()
	msg := filepath.Join(t.TempDir(), "message")
	if err := os.WriteFile(msg, []byte(message), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-q", "-Y", "sign", "-f", k.path, "-n", namespace}, opts...)
	if out, err := exec.Command("ssh-keygen", append(args, msg)...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
	}
	sig, err := os.ReadFile(msg + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	return string(sig)
}

// TestVerifyKeyProof checks signatures made by OpenSSH's ssh-keygen -Y sign:
// the right key, namespace and message pass; anything else is refused.
func TestVerifyKeyProof(t *testing.T) {
	const ns, msg = "fcm-keys-add@fcm.example.com", "6tO3v7cQ0mK1yFqjvW1y8Jd0cV9tJm2zX8Qn4r5Lk3A"
	other := newSSHKey(t, "ed25519", "other")
	for _, typ := range []string{"ed25519", "rsa"} {
		t.Run(typ, func(t *testing.T) {
			k := newSSHKey(t, typ, "ada@laptop")
			good := k.sign(t, ns, msg)
			if err := verifyKeyProof(good, ns, []byte(msg), k.pub); err != nil {
				t.Errorf("a good signature (sha512): %v", err)
			}
			if err := verifyKeyProof(k.sign(t, ns, msg, "-O", "hashalg=sha256"), ns, []byte(msg), k.pub); err != nil {
				t.Errorf("a good signature (sha256): %v", err)
			}
			for name, c := range map[string]struct {
				sig, ns, msg string
				key          ssh.PublicKey
				want         string
			}{
				"wrong namespace":       {k.sign(t, "fcm-keys-add@other.example.com", msg), ns, msg, k.pub, "namespace"},
				"git's namespace":       {k.sign(t, "git", msg), ns, msg, k.pub, "namespace"},
				"wrong message":         {good, ns, msg + "x", k.pub, "does not match"},
				"another key signed":    {other.sign(t, ns, msg), ns, msg, k.pub, "another key (" + other.fp + ")"},
				"for another key":       {good, ns, msg, other.pub, "another key (" + k.fp + ")"},
				"tampered":              {tamper(t, good), ns, msg, k.pub, "does not match"},
				"not armored":           {"hello", ns, msg, k.pub, "not an SSH signature"},
				"empty armor":           {sshsigBegin + "\n" + sshsigEnd, ns, msg, k.pub, "not an SSH signature"},
				"bad base64":            {sshsigBegin + "\n!!!!\n" + sshsigEnd, ns, msg, k.pub, "base64"},
				"truncated":             {truncate(t, good), ns, msg, k.pub, "cannot be read"},
				"a public key, no sig":  {k.line, ns, msg, k.pub, "not an SSH signature"},
				"the signature file ok": {"\n" + good + "\n\n", ns, msg, k.pub, ""},
			} {
				err := verifyKeyProof(c.sig, c.ns, []byte(c.msg), c.key)
				if c.want == "" {
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
					continue
				}
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("%s: %v, want an error with %q", name, err, c.want)
				}
			}
		})
	}
}

// rawSig returns the signature's SSHSIG bytes; armor makes them a signature
// file again.
func rawSig(t *testing.T, armored string) []byte {
	t.Helper()
	s := strings.TrimSpace(armored)
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s[len(sshsigBegin):len(s)-len(sshsigEnd)]), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func armor(raw []byte) string {
	return sshsigBegin + "\n" + base64.StdEncoding.EncodeToString(raw) + "\n" + sshsigEnd + "\n"
}

// tamper flips a bit in the signature's last bytes (the signature blob).
func tamper(t *testing.T, armored string) string {
	raw := rawSig(t, armored)
	raw[len(raw)-3] ^= 1
	return armor(raw)
}

func truncate(t *testing.T, armored string) string {
	raw := rawSig(t, armored)
	return armor(raw[:len(raw)-10])
}

func TestKeyChallenges(t *testing.T) {
	var c keyChallenges
	now := time.Now()
	a, err := c.issue("alice", "fcm-keys-add@h", now)
	if err != nil || len(a) != 43 {
		t.Fatalf("issue = %q, %v", a, err)
	}
	if _, ok := c.take("bob", a, now); ok {
		t.Error("bob took alice's challenge")
	}
	if ns, ok := c.take("alice", a, now); !ok || ns != "fcm-keys-add@h" {
		t.Errorf("take = %q, %v", ns, ok)
	}
	if _, ok := c.take("alice", a, now); ok {
		t.Error("a challenge taken twice")
	}
	b, _ := c.issue("alice", "fcm-keys-add@h", now)
	if _, ok := c.take("alice", b, now.Add(keyChallengeTTL)); ok {
		t.Error("an expired challenge was taken")
	}
	if _, ok := c.take("alice", b, now); ok {
		t.Error("an expired challenge is still there after its try")
	}
	var first string
	for i := 0; i < maxKeyChallengesPerToken+1; i++ {
		x, _ := c.issue("alice", "ns", now.Add(time.Duration(i)))
		if i == 0 {
			first = x
		}
	}
	if len(c.m) != maxKeyChallengesPerToken {
		t.Errorf("%d challenges pending for one token, want at most %d", len(c.m), maxKeyChallengesPerToken)
	}
	if _, ok := c.take("alice", first, now); ok {
		t.Error("the oldest challenge was kept past the bound")
	}
	c.issue("bob", "ns", now)
	if _, err := c.issue("carol", "ns", now.Add(keyChallengeTTL+time.Second)); err != nil || len(c.m) != 1 {
		t.Errorf("expired challenges are not swept: %d left, %v", len(c.m), err)
	}
}

// The daemon's namespace for a Host is the one the client makes from its URL.
func TestKeyNamespace(t *testing.T) {
	for host, want := range map[string]string{
		"127.0.0.1:7777":       "fcm-keys-add@127.0.0.1",
		"[::1]:7777":           "fcm-keys-add@::1",
		"FCM.Example.com":      "fcm-keys-add@fcm.example.com",
		"fcm.example.com:443":  "fcm-keys-add@fcm.example.com",
		"fcm.example.com:7777": "fcm-keys-add@fcm.example.com",
	} {
		scheme := "http://"
		if strings.HasSuffix(host, ":443") || !strings.Contains(host, ":") {
			scheme = "https://"
		}
		c := &client.Client{Host: scheme + host}
		if got := keyNamespace(host); got != want || c.KeyNamespace() != want {
			t.Errorf("%s: daemon %q, client %q, want %q", host, got, c.KeyNamespace(), want)
		}
	}
}
