package daemon

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"golang.org/x/crypto/ssh"
)

// Adding a key takes proof that the caller holds its private half: a
// signature, in OpenSSH's SSHSIG format (ssh-keygen -Y sign, PROTOCOL.sshsig),
// over a one-time challenge the daemon gave that caller's token. Without it
// anyone could add someone else's public key (they are public, for example
// github.com/<user>.keys) and so keep its owner from adding it.

const (
	// keyChallengeTTL is how long a challenge may be answered.
	keyChallengeTTL = 5 * time.Minute
	// maxKeyChallengesPerToken bounds the challenges one token has pending;
	// asking for more forgets its oldest.
	maxKeyChallengesPerToken = 8
	// maxKeyChallenges bounds them all, so that many tokens asking cannot
	// grow the daemon's memory.
	maxKeyChallenges = 10000
)

// keyChallenges are the pending challenges of POST /v1/keys/challenge. The
// zero value is ready to use.
type keyChallenges struct {
	mu sync.Mutex
	m  map[string]keyChallenge // challenge -> whose, for what, until when
}

type keyChallenge struct {
	token     string // the id of the token it was given to
	namespace string
	expires   time.Time
}

var errTooManyChallenges = errors.New("too many key challenges pending on this host: try again in a few minutes")

// issue makes a challenge for the token tokenID in namespace.
func (c *keyChallenges) issue(tokenID, namespace string, now time.Time) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	challenge := base64.RawURLEncoding.EncodeToString(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]keyChallenge{}
	}
	var mine []string
	for k, v := range c.m {
		switch {
		case !now.Before(v.expires):
			delete(c.m, k)
		case v.token == tokenID:
			mine = append(mine, k)
		}
	}
	if len(mine) >= maxKeyChallengesPerToken {
		oldest := mine[0]
		for _, k := range mine {
			if c.m[k].expires.Before(c.m[oldest].expires) {
				oldest = k
			}
		}
		delete(c.m, oldest)
	}
	if len(c.m) >= maxKeyChallenges {
		return "", errTooManyChallenges
	}
	c.m[challenge] = keyChallenge{token: tokenID, namespace: namespace, expires: now.Add(keyChallengeTTL)}
	return challenge, nil
}

// take returns the challenge's namespace and forgets it, if it was given to
// tokenID and has not expired: a challenge is good for one try.
func (c *keyChallenges) take(tokenID, challenge string, now time.Time) (namespace string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, found := c.m[challenge]
	if !found || v.token != tokenID {
		return "", false
	}
	delete(c.m, challenge)
	return v.namespace, now.Before(v.expires)
}

// keyNamespace is the SSHSIG namespace of key proofs made for a daemon
// addressed as host (a request's Host: a name or address, with or without a
// port), as the client makes it from its URL.
func keyNamespace(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(strings.ToLower(host), "[]")
	if host == "" {
		host = "localhost"
	}
	return api.KeyNamespacePrefix + host
}

// sshsig is a parsed SSHSIG signature (PROTOCOL.sshsig).
type sshsig struct {
	Version   uint32
	PublicKey []byte
	Namespace string
	Reserved  string
	HashAlg   string
	Signature []byte
	Rest      []byte `ssh:"rest"`
}

const (
	sshsigMagic = "SSHSIG"
	sshsigBegin = "-----BEGIN SSH SIGNATURE-----"
	sshsigEnd   = "-----END SSH SIGNATURE-----"
)

// parseSSHSig reads an armored SSHSIG signature, as ssh-keygen -Y sign writes it.
func parseSSHSig(armored string) (*sshsig, error) {
	armored = strings.TrimSpace(armored)
	if !strings.HasPrefix(armored, sshsigBegin) || !strings.HasSuffix(armored, sshsigEnd) {
		return nil, errors.New("not an SSH signature (want ssh-keygen -Y sign's output, -----BEGIN SSH SIGNATURE-----...)")
	}
	body := strings.Join(strings.Fields(armored[len(sshsigBegin):len(armored)-len(sshsigEnd)]), "")
	raw, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("the SSH signature is not valid base64: %v", err)
	}
	if !bytes.HasPrefix(raw, []byte(sshsigMagic)) {
		return nil, errors.New("not an SSH signature (no SSHSIG preamble)")
	}
	var sig sshsig
	if err := ssh.Unmarshal(raw[len(sshsigMagic):], &sig); err != nil {
		return nil, fmt.Errorf("the SSH signature cannot be read: %v", err)
	}
	if sig.Version != 1 {
		return nil, fmt.Errorf("SSH signature version %d is not supported (want 1)", sig.Version)
	}
	if len(sig.Rest) > 0 {
		return nil, errors.New("the SSH signature has trailing data")
	}
	return &sig, nil
}

// verifyKeyProof checks that armored is an SSHSIG signature by want over
// message in namespace.
func verifyKeyProof(armored, namespace string, message []byte, want ssh.PublicKey) error {
	sig, err := parseSSHSig(armored)
	if err != nil {
		return err
	}
	pub, err := ssh.ParsePublicKey(sig.PublicKey)
	if err != nil {
		return fmt.Errorf("the signature's public key cannot be read: %v", err)
	}
	if !bytes.Equal(pub.Marshal(), want.Marshal()) {
		return fmt.Errorf("the signature was made by another key (%s) than the one being added (%s)",
			ssh.FingerprintSHA256(pub), ssh.FingerprintSHA256(want))
	}
	if sig.Namespace != namespace {
		return fmt.Errorf("the signature is for namespace %q, not %q", sig.Namespace, namespace)
	}
	var h []byte
	switch sig.HashAlg {
	case "sha256":
		s := sha256.Sum256(message)
		h = s[:]
	case "sha512":
		s := sha512.Sum512(message)
		h = s[:]
	default:
		return fmt.Errorf("the signature's hash %q is not supported (want sha256 or sha512)", sig.HashAlg)
	}
	var s ssh.Signature
	if err := ssh.Unmarshal(sig.Signature, &s); err != nil {
		return fmt.Errorf("the signature cannot be read: %v", err)
	}
	if s.Format == ssh.KeyAlgoRSA { // RSA with SHA-1: PROTOCOL.sshsig forbids it
		return errors.New("RSA signatures with SHA-1 are not accepted (ssh-keygen -Y sign makes rsa-sha2-512)")
	}
	if err := want.Verify(sshsigSignedData(namespace, sig.Reserved, sig.HashAlg, h), &s); err != nil {
		return errors.New("the signature does not match the challenge and key")
	}
	return nil
}

// sshsigSignedData is what an SSHSIG signature signs: the preamble, then the
// namespace, reserved field, hash algorithm and message hash as SSH strings.
func sshsigSignedData(namespace, reserved, hashAlg string, hash []byte) []byte {
	var b bytes.Buffer
	b.WriteString(sshsigMagic)
	for _, s := range [][]byte{[]byte(namespace), []byte(reserved), []byte(hashAlg), hash} {
		binary.Write(&b, binary.BigEndian, uint32(len(s)))
		b.Write(s)
	}
	return b.Bytes()
}
