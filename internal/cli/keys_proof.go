package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// challengeRE is what a daemon's challenge looks like (base64url of random
// bytes). fcm signs nothing else, in no other namespace than its own: a
// daemon cannot have it sign a git commit, or another host's challenge.
var challengeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{32,128}$`)

// proveKey signs a fresh challenge of the daemon's with the key pub, read
// from path ("" for stdin), using ssh-keygen -Y sign: with the private key
// beside the .pub, or the key in ssh-agent.
func proveKey(cmd *cobra.Command, c *client.Client, pub ssh.PublicKey, path string) (challenge, signature string, err error) {
	fp := ssh.FingerprintSHA256(pub)
	private := ""
	if strings.HasSuffix(path, ".pub") {
		if _, err := os.Stat(strings.TrimSuffix(path, ".pub")); err == nil {
			private = strings.TrimSuffix(path, ".pub")
		}
	}
	if private == "" && !agentHasKey(pub) {
		where := "it came from stdin"
		if path != "" {
			where = "no private key beside " + path
			if strings.HasSuffix(path, ".pub") {
				where = strings.TrimSuffix(path, ".pub") + " does not exist"
			}
		}
		return "", "", fmt.Errorf("cannot prove you hold key %s: %s and ssh-agent does not hold it "+
			"(fcm keys add signs a challenge with the private key: keep it beside the .pub, or ssh-add it)", fp, where)
	}
	ch, err := c.KeyChallenge(cmd.Context())
	if err != nil {
		return "", "", err
	}
	if want := c.KeyNamespace(); ch.Namespace != want || !challengeRE.MatchString(ch.Challenge) {
		return "", "", fmt.Errorf("the daemon asked to sign %q in namespace %q, not a challenge in %q: refused", ch.Challenge, ch.Namespace, want)
	}
	dir, err := os.MkdirTemp("", "fcm-keys-add-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(dir)
	// ssh-keygen signs with the agent when it holds the key, else with the
	// private key named by the .pub's path less ".pub".
	pubFile := path
	if private == "" {
		pubFile = filepath.Join(dir, "key.pub")
		if err := os.WriteFile(pubFile, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
			return "", "", err
		}
	}
	msg := filepath.Join(dir, "challenge")
	if err := os.WriteFile(msg, []byte(ch.Challenge), 0o600); err != nil {
		return "", "", err
	}
	sign := exec.CommandContext(cmd.Context(), "ssh-keygen", "-q", "-Y", "sign", "-f", pubFile, "-n", ch.Namespace, msg)
	if path != "" { // a passphrase may be asked for (on the terminal, else on stdin)
		sign.Stdin = os.Stdin
	}
	var stderr bytes.Buffer
	sign.Stderr = &stderr
	if err := sign.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", "", errors.New("ssh-keygen not found: fcm keys add signs with it (install OpenSSH's client)")
		}
		return "", "", fmt.Errorf("ssh-keygen could not sign with key %s: %s", fp, lastLine(stderr.String(), err))
	}
	sig, err := os.ReadFile(msg + ".sig")
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("ssh-keygen wrote no signature: %s", lastLine(stderr.String(), err))
	}
	return ch.Challenge, string(sig), err
}

// agentHasKey says whether the ssh-agent at $SSH_AUTH_SOCK holds pub.
func agentHasKey(pub ssh.PublicKey) bool {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return false
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return false
	}
	defer conn.Close()
	keys, err := agent.NewClient(conn).List()
	if err != nil {
		return false
	}
	for _, k := range keys {
		if bytes.Equal(k.Blob, pub.Marshal()) {
			return true
		}
	}
	return false
}

// lastLine is the last non-empty line of a tool's output, else err's text.
func lastLine(out string, err error) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return err.Error()
}
