package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// AdminToken is the admin token's file, <data-dir>/.token: the one copy of the
// secret, and what the store's admin set is made equal to.
type AdminToken struct {
	Path string
	mu   sync.Mutex
}

// TokenRecipe is how a person gives the admin token to the CLI: install
// creates the copy with its final mode and owner, so no other user can open it
// in between (as they could with a shell redirect and a chmod after).
func TokenRecipe(path string) string {
	return fmt.Sprintf("sudo install -m 600 -o \"$USER\" %s ~/.fcm-token", path)
}

// ensureAdminToken reads the admin token (making it on first run, or a new one
// when rotate is set) and makes the store's admin tokens equal to it: any other
// admin token (a leaked one whose file was replaced) stops working.
func ensureAdminToken(st *store.Store, dataDir string, rotate bool) (t *AdminToken, created bool, err error) {
	t = &AdminToken{Path: filepath.Join(dataDir, TokenFile)}
	secret, err := t.read()
	switch {
	case rotate || errors.Is(err, fs.ErrNotExist) || err == nil && secret == "":
		secret = store.NewSecret()
		if err := writeSecret(t.Path, secret); err != nil {
			return nil, false, fmt.Errorf("admin token: %w", err)
		}
		created = true
	case err != nil:
		return nil, false, err
	}
	var removed int
	if err := st.Update(func(tx *store.Tx) (err error) { removed, err = tx.SetAdminToken(secret); return }); err != nil {
		return nil, false, err
	}
	if removed > 0 || rotate {
		slog.Warn("admin token replaced", "token_fp", store.Fingerprint(secret), "revoked", removed, "file", t.Path)
	}
	return t, created, nil
}

// read returns the token in the file, refusing one others may read or that is
// not a secret fcm made.
func (t *AdminToken) read() (string, error) {
	fi, err := os.Lstat(t.Path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("admin token %s is not a regular file (%s): remove it and restart to make a new one", t.Path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("admin token %s has mode %#o, readable by others: run chmod 600 %s (and rotate it: fcm daemon --rotate-admin-token)", t.Path, perm, t.Path)
	}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return "", fmt.Errorf("admin token %s is owned by uid %d, not by the daemon's user (uid %d): remove it and restart to make a new one", t.Path, sys.Uid, os.Geteuid())
	}
	data, err := os.ReadFile(t.Path)
	if err != nil {
		return "", err
	}
	secret := strings.TrimSpace(string(data))
	if secret != "" && !store.ValidSecret(secret) {
		return "", fmt.Errorf("admin token %s does not hold an fcm token (fcm_ and 40 hex digits): remove it and restart, or run fcm daemon --rotate-admin-token", t.Path)
	}
	return secret, nil
}

// writeSecret replaces the file at path with secret, mode 0600, through a new
// temporary file (O_EXCL: a planted symlink is not followed) and a rename.
func writeSecret(path, secret string) error {
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(secret + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Rotate makes a new admin token, writes it to the file and revokes every
// other admin token at once. The file is written first: it is what the next
// start trusts, so a failure after it leaves the new token in force.
func (t *AdminToken) Rotate(st *store.Store) (secret string, removed int, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	secret = store.NewSecret()
	if err := writeSecret(t.Path, secret); err != nil {
		return "", 0, fmt.Errorf("write the admin token: %w", err)
	}
	err = st.Update(func(tx *store.Tx) (err error) { removed, err = tx.SetAdminToken(secret); return })
	return secret, removed, err
}

// checkDataDir refuses a data dir another user could change: root follows
// paths in it (the token's temporary file, VM directories it removes). A
// missing one is made later, 0700.
func checkDataDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("--data-dir %s is not a directory", dir)
	}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("--data-dir %s is owned by uid %d, not root: run chown root: %s", dir, sys.Uid, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("--data-dir %s has mode %#o, writable by group or others: run chmod go-w %s", dir, perm, dir)
	}
	for _, sub := range []string{"vms", "logs"} {
		if fi, err := os.Lstat(filepath.Join(dir, sub)); err == nil && !fi.IsDir() {
			return fmt.Errorf("--data-dir: %s is not a directory (%s): remove it", filepath.Join(dir, sub), fi.Mode().Type())
		}
	}
	return nil
}

// rotateToken is POST /v1/tokens/admin/rotate: the admin replaces its own
// token; the answer carries the new secret, the old one is refused from now on.
func (s *Server) rotateToken(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	if s.AdminToken == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this daemon has no admin token file to rotate")
		return
	}
	secret, removed, err := s.AdminToken.Rotate(s.Store)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Warn("admin token rotated", "new_token_fp", store.Fingerprint(secret), "revoked", removed, "file", s.AdminToken.Path)
	writeJSON(w, http.StatusOK, api.RotateTokenResponse{Token: secret, Fingerprint: store.Fingerprint(secret), File: s.AdminToken.Path})
}
