package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPublicKey(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	ssh := filepath.Join(home, ".ssh")

	_, _, err := readPublicKey(nil, nil)
	for _, want := range []string{filepath.Join(ssh, "id_ed25519.pub"), filepath.Join(ssh, "id_rsa.pub"), "ssh-keygen -t ed25519"} {
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("no key files: %v, want one line with %q", err, want)
		}
	}
	os.MkdirAll(ssh, 0o700)
	os.WriteFile(filepath.Join(ssh, "id_rsa.pub"), []byte("ssh-rsa RSA\n"), 0o644)
	if got, path, err := readPublicKey(nil, nil); err != nil || got != "ssh-rsa RSA\n" || path != filepath.Join(ssh, "id_rsa.pub") {
		t.Errorf("only id_rsa.pub: %q %s, %v", got, path, err)
	}
	os.WriteFile(filepath.Join(ssh, "id_ed25519.pub"), []byte("ssh-ed25519 ED\n"), 0o644)
	if got, path, err := readPublicKey(nil, nil); err != nil || got != "ssh-ed25519 ED\n" || path != filepath.Join(ssh, "id_ed25519.pub") {
		t.Errorf("both: %q %s, %v (ed25519 comes first)", got, path, err)
	}
	if got, path, err := readPublicKey(strings.NewReader("ssh-ed25519 STDIN"), []string{"-"}); err != nil || got != "ssh-ed25519 STDIN" || path != "" {
		t.Errorf("stdin: %q %q, %v", got, path, err)
	}
	if _, _, err := readPublicKey(nil, []string{filepath.Join(home, "missing.pub")}); err == nil || !strings.Contains(err.Error(), "missing.pub") {
		t.Errorf("a missing file: %v", err)
	}
}
