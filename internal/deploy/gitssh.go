package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/names"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// SSHUser is the one user git's SSH transport logs in as: ssh://git@host/<app>.git.
const SSHUser = "git"

// What a successful public-key authentication records in ssh.Permissions, the
// only thing a connection is authorized from afterwards.
const (
	extKey     = "fcm-key"   // the key's fingerprint
	extTokenID = "fcm-owner" // who the key acts for: a user id, or "admin"
)

// ServeSSH serves git over SSH on ln until ctx ends: user git, public keys
// added with `fcm keys add`, and only git-receive-pack and git-upload-pack on
// an app's repository. A push runs the same receive-pack, hooks and build as
// over HTTPS.
func (s *Service) ServeSSH(ctx context.Context, ln net.Listener, hostKey ssh.Signer) error {
	cfg := &ssh.ServerConfig{PublicKeyCallback: s.sshAuth, ServerVersion: "SSH-2.0-fcm"}
	cfg.AddHostKey(hostKey)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return err
		}
		release, ok := s.startHandshake(nc.RemoteAddr())
		if !ok {
			// Too many unauthenticated connections: closed at once, before any
			// key exchange.
			nc.Close()
			continue
		}
		go s.sshConn(ctx, nc, cfg, release)
	}
}

// sshAuth accepts user git with a key in the store. It only says which key and
// token a successful authentication was for: the client may offer keys it
// cannot prove (CVE-2024-45337), so nothing is decided from a mere call.
func (s *Service) sshAuth(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	if meta.User() != SSHUser {
		return nil, fmt.Errorf("user %q: only %q is served", meta.User(), SSHUser)
	}
	fp := ssh.FingerprintSHA256(key)
	var k *store.Key
	if err := s.Store.View(func(tx *store.Tx) (err error) { k, err = tx.KeyByFingerprint(fp); return }); err != nil {
		return nil, errors.New("unknown key")
	}
	stored, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.Line))
	if err != nil || !bytes.Equal(stored.Marshal(), key.Marshal()) {
		return nil, errors.New("unknown key")
	}
	return &ssh.Permissions{Extensions: map[string]string{extKey: fp, extTokenID: k.Owner}}, nil
}

// sshConn serves one connection; handshakeDone is called once its
// handshake has ended, successful or not.
func (s *Service) sshConn(ctx context.Context, nc net.Conn, cfg *ssh.ServerConfig, handshakeDone func()) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(SSHHandshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	handshakeDone()
	if err != nil {
		s.Log.Debug("git ssh: handshake", "remote", nc.RemoteAddr(), "err", err)
		return
	}
	defer sconn.Close()
	nc.SetDeadline(time.Time{})
	go ssh.DiscardRequests(reqs)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { sconn.Wait(); cancel() }()
	stop := context.AfterFunc(ctx, func() { sconn.Close() })
	defer stop()

	// Authorized from what the successful authentication returned, only.
	var perms map[string]string
	if sconn.Permissions != nil {
		perms = sconn.Permissions.Extensions
	}
	if perms[extKey] == "" || perms[extTokenID] == "" {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "fcm serves git only (session channels)")
			continue
		}
		ch, chReqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sshSession(ctx, ch, chReqs, perms[extKey], perms[extTokenID])
		}()
	}
}

// sshSession serves one session channel: env GIT_PROTOCOL, then one exec.
// The channel closing (the client went away) kills what the exec runs.
func (s *Service) sshSession(ctx context.Context, ch ssh.Channel, reqs <-chan *ssh.Request, fp, tokenID string) {
	defer ch.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var protocol string
	var done chan struct{}
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			ok := ssh.Unmarshal(req.Payload, &kv) == nil && kv.Name == "GIT_PROTOCOL" && done == nil
			if ok {
				protocol = kv.Value
			}
			req.Reply(ok, nil)
		case "exec", "shell":
			if done != nil {
				req.Reply(false, nil)
				continue
			}
			var command string
			if req.Type == "exec" {
				var p struct{ Command string }
				if ssh.Unmarshal(req.Payload, &p) != nil {
					req.Reply(false, nil)
					continue
				}
				command = p.Command
			}
			req.Reply(true, nil)
			done = make(chan struct{})
			go func() {
				defer close(done)
				code := s.sshExec(ctx, ch, command, protocol, fp, tokenID)
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
				ch.Close()
			}()
		default: // pty-req, subsystem, x11-req, auth-agent-req...: not served
			req.Reply(false, nil)
		}
	}
	// The channel is closed: by the exec ending, or by the client going away.
	cancel()
	if done != nil {
		<-done
	}
}

// sshExec runs one exec request and returns its exit status.
func (s *Service) sshExec(ctx context.Context, ch ssh.Channel, command, protocol, fp, tokenID string) uint32 {
	stderr := ch.Stderr()
	if command == "" {
		fmt.Fprintf(stderr, "Hi! Your key %s works, but fcm gives no shell: deploy with\n  git push ssh://git@<host>:<port>/<app>.git main\n", fp)
		return 1
	}
	service, name, err := ParseGitCommand(command)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	var tok *store.Token
	err = s.Store.View(func(tx *store.Tx) error {
		k, err := tx.KeyByFingerprint(fp)
		if err != nil || k.Owner != tokenID {
			return errors.New("key removed")
		}
		tok, err = tx.Acting(tokenID)
		return err
	})
	if err != nil {
		// Removed since the connection began.
		fmt.Fprintf(stderr, "Permission denied: key %s is no longer added\n", fp)
		return 1
	}
	vm, err := s.Store.GetVM(name)
	if err != nil || !mayUse(tok, vm) {
		fmt.Fprintf(stderr, "no app named %q\n", name)
		return 1
	}
	if err := s.EnsureRepo(ctx, vm.ID); err != nil {
		s.Log.Error("git repository", "vm", name, "err", err)
		fmt.Fprintf(stderr, "fcm: the repository of %s is not available\n", name)
		return 1
	}
	s.Log.Info("git ssh", "service", service, "vm", name, "key", fp, "token", tokenID)
	err = s.runGit(ctx, gitRun{Service: service, VM: vm, Token: tok, Protocol: protocol,
		Stdin: ch, Stdout: ch, Stderr: stderr})
	var ee *exec.ExitError
	var refused *PushRefused
	switch {
	case err == nil:
		return 0
	case errors.As(err, &refused):
		fmt.Fprintf(stderr, "fcm: %s\n", refused.Msg)
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return uint32(ee.ExitCode())
	case errors.Is(err, errGitStart):
		s.Log.Error("git ssh", "vm", name, "err", err)
		fmt.Fprintln(stderr, "fcm: git could not be started on the server")
	}
	return 1
}

// ParseGitCommand reads the command git's SSH transport runs:
// `git-receive-pack '<app>.git'` (also '/<app>.git' and '<app>') or
// git-upload-pack likewise. The app name is validated before any path is
// made of it.
func ParseGitCommand(command string) (service, name string, err error) {
	verb, arg, _ := strings.Cut(strings.TrimSpace(command), " ")
	if verb == "git" { // "git receive-pack", an older spelling
		var sub string
		sub, arg, _ = strings.Cut(strings.TrimLeft(arg, " "), " ")
		verb = "git-" + sub
	}
	if verb != "git-receive-pack" && verb != "git-upload-pack" {
		return "", "", fmt.Errorf("fcm serves git only (git push ssh://git@<host>/<app>.git), not %q", truncate(command, 60))
	}
	arg = strings.TrimSpace(arg)
	if len(arg) >= 2 && arg[0] == '\'' && arg[len(arg)-1] == '\'' {
		arg = arg[1 : len(arg)-1]
	}
	if strings.ContainsAny(arg, "'\"\\ \t\n") {
		return "", "", fmt.Errorf("not a repository of fcm: %q (use /<app>.git)", truncate(arg, 60))
	}
	name = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(arg, "/"), "/"), ".git")
	if err := names.Validate(name); err != nil {
		return "", "", fmt.Errorf("not a repository of fcm: %q (use /<app>.git): %w", truncate(arg, 60), err)
	}
	return verb, name, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
