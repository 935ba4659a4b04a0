package daemon

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// A token sees and removes only its own keys; an admin's are its own too
// (keys are personal, unlike VMs an operator may need to manage).

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var keys []*store.Key
	if err := s.Store.View(func(tx *store.Tx) (err error) { keys, err = tx.Keys(tok.Owner()); return }); err != nil {
		s.fail(w, err)
		return
	}
	out := api.ListKeysResponse{Keys: []api.Key{}}
	for _, k := range keys {
		out.Keys = append(out.Keys, keyToAPI(k))
	}
	writeJSON(w, http.StatusOK, out)
}

// keyChallenge gives the caller a one-time challenge to sign with the key it
// wants to add (see keys_proof.go).
func (s *Server) keyChallenge(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	now := time.Now()
	_, host, _ := strings.Cut(publicURL(r), "://") // the host the client named, through Caddy too
	ns := keyNamespace(host)
	c, err := s.keyProofs.issue(tok.ID, ns, now)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, api.KeyChallenge{Challenge: c, Namespace: ns, ExpiresAt: now.Add(keyChallengeTTL).UTC()})
}

// addKey adds a key once its proof holds. Whether the key is already added,
// and to whom, is looked at only after that: a caller who cannot sign with
// the key learns nothing of it, and one who can may be told, since holding
// the key they could log in with it anyway.
func (s *Server) addKey(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var req api.AddKeyRequest
	if !decode(w, r, &req) {
		return
	}
	k, pub, err := parseKey(req.PublicKey)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	noteDetail(r, k.Fingerprint)
	if err := s.checkKeyProof(tok, req, pub); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	k.Owner = tok.Owner()
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.InsertKey(k) }); err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Info("ssh key added", "fingerprint", k.Fingerprint, "owner", tok.Owner())
	writeJSON(w, http.StatusCreated, keyToAPI(k))
}

// checkKeyProof checks req's signature of its challenge by pub. Its errors
// say what is wrong with the proof, never anything of the key's record.
func (s *Server) checkKeyProof(tok *store.Token, req api.AddKeyRequest, pub ssh.PublicKey) error {
	if req.Challenge == "" || req.Signature == "" {
		return errors.New("adding a key needs proof that you hold its private key: a signature of a challenge " +
			"from POST /v1/keys/challenge (fcm keys add makes it with ssh-keygen; update fcm if it did not)")
	}
	ns, ok := s.keyProofs.take(tok.ID, req.Challenge, time.Now())
	if !ok {
		return errors.New("the key's challenge is unknown, used or expired: run fcm keys add again")
	}
	if err := verifyKeyProof(req.Signature, ns, []byte(req.Challenge), pub); err != nil {
		return fmt.Errorf("no proof that you hold the key: %w", err)
	}
	return nil
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	fp := normalizeFingerprint(r.PathValue("fingerprint"))
	noteDetail(r, fp)
	err := s.Store.Update(func(tx *store.Tx) error {
		k, err := tx.KeyByFingerprint(fp)
		if err != nil || k.Owner != tok.Owner() {
			return fmt.Errorf("no key %s (see fcm keys ls): %w", fp, store.ErrNotFound)
		}
		return tx.DeleteKey(fp)
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Info("ssh key removed", "fingerprint", fp, "owner", tok.Owner())
	w.WriteHeader(http.StatusNoContent)
}

// normalizeFingerprint accepts a fingerprint with or without "SHA256:", and in
// base64url (what the client puts in paths: '/' cannot be in a path segment).
func normalizeFingerprint(fp string) string {
	fp = strings.TrimPrefix(fp, "SHA256:")
	fp = strings.NewReplacer("-", "+", "_", "/").Replace(fp)
	return "SHA256:" + fp
}

func keyToAPI(k *store.Key) api.Key {
	line := k.Line
	if k.Comment != "" {
		line += " " + k.Comment
	}
	return api.Key{Fingerprint: k.Fingerprint, Type: k.Type, Comment: k.Comment, PublicKey: line, AddedAt: k.AddedAt}
}

// parseKey reads one authorized_keys line, refusing what cannot or should not
// log in: private keys, options, certificates, short RSA keys, several keys.
func parseKey(line string) (*store.Key, ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, nil, errors.New("no public key given: send an authorized_keys line such as 'ssh-ed25519 AAAA... you@host'")
	}
	if strings.Contains(line, "PRIVATE KEY") {
		return nil, nil, errors.New("this is a private key: give the public one (the .pub file); the private key never leaves your machine")
	}
	pub, comment, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, nil, fmt.Errorf("not an SSH public key (want an authorized_keys line such as 'ssh-ed25519 AAAA... you@host'): %v", err)
	}
	if len(options) > 0 {
		return nil, nil, fmt.Errorf("key options are not supported (%s): give the key alone", strings.Join(options, ","))
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey(rest); err == nil {
		return nil, nil, errors.New("more than one key given: add one at a time")
	}
	if strings.Contains(pub.Type(), "-cert-") {
		return nil, nil, errors.New("SSH certificates are not supported: give a plain public key")
	}
	if ck, ok := pub.(ssh.CryptoPublicKey); ok {
		if rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); ok && rk.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("RSA key of %d bits is too weak (at least 2048; better: ssh-keygen -t ed25519)", rk.N.BitLen())
		}
	}
	return &store.Key{
		Fingerprint: ssh.FingerprintSHA256(pub),
		Type:        pub.Type(),
		Comment:     comment,
		Line:        strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
	}, pub, nil
}
