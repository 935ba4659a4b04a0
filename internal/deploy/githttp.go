package deploy

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/fcmhost/fcm/internal/store"
)

// GitHandler serves git's smart HTTP protocol at /git/<name>.git: clone, fetch
// and push, with the fcm token as the HTTP Basic password. Pushes run the real
// `git receive-pack`, whose pre-receive hook builds and releases the app.
func (s *Service) GitHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, "/git/")
		name, action, ok := strings.Cut(rest, "/")
		name = strings.TrimSuffix(name, ".git")
		if !ok || name == "" {
			http.Error(w, "not a repository path: use /git/<vm>.git", http.StatusNotFound)
			return
		}
		tok := s.basicAuth(r)
		if tok == nil {
			w.Header().Set("WWW-Authenticate", `Basic realm="fcm"`)
			http.Error(w, "fcm token required as the password (fcm git-remote sets this up)", http.StatusUnauthorized)
			return
		}
		var service string
		switch {
		case r.Method == http.MethodGet && action == "info/refs":
			service = r.URL.Query().Get("service")
		case r.Method == http.MethodPost && (action == "git-receive-pack" || action == "git-upload-pack"):
			service = action
		default:
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if service != "git-receive-pack" && service != "git-upload-pack" {
			http.Error(w, "only git's smart HTTP protocol is served (git >= 1.6.6)", http.StatusForbidden)
			return
		}
		vm, err := s.Store.GetVM(name)
		if err != nil || !mayUse(tok, vm) {
			gitError(w, service, fmt.Sprintf("no app named %q", name))
			return
		}
		if err := s.EnsureRepo(r.Context(), vm.ID); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if action == "info/refs" {
			if service == "git-receive-pack" {
				// Said now, before git sends its pack; the POST checks again.
				var refused *PushRefused
				if err := s.checkPush(vm); errors.As(err, &refused) {
					gitError(w, service, "fcm: "+refused.Msg)
					return
				}
			}
			s.advertise(w, r, service, vm)
			return
		}
		s.serviceRPC(w, r, service, vm, tok)
	})
}

// basicAuth returns the token whose secret is the request's password.
func (s *Service) basicAuth(r *http.Request) *store.Token {
	_, secret, ok := r.BasicAuth()
	if !ok || secret == "" {
		return nil
	}
	var tok *store.Token
	if err := s.Store.View(func(tx *store.Tx) (err error) { tok, _, err = tx.Authenticate(secret); return }); err != nil {
		return nil
	}
	return tok
}

func pktLine(s string) string { return fmt.Sprintf("%04x%s", len(s)+4, s) }

// gitError answers in the protocol itself, so git prints "remote error: msg".
func gitError(w http.ResponseWriter, service, msg string) {
	w.Header().Set("Content-Type", "application/x-"+service+"-advertisement")
	w.Header().Set("Cache-Control", "no-cache")
	io.WriteString(w, pktLine("# service="+service+"\n")+"0000"+pktLine("ERR "+msg+"\n"))
}

func (s *Service) advertise(w http.ResponseWriter, r *http.Request, service string, vm *store.VM) {
	cmd := s.gitCommand(strings.TrimPrefix(service, "git-"), "--stateless-rpc", "--advertise-refs", s.repoOf(vm))
	if p := r.Header.Get("Git-Protocol"); p != "" {
		cmd.Env = append(cmd.Env, "GIT_PROTOCOL="+p)
	}
	out, err := cmd.Output()
	if err != nil {
		http.Error(w, "git: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-"+service+"-advertisement")
	w.Header().Set("Cache-Control", "no-cache")
	io.WriteString(w, pktLine("# service="+service+"\n")+"0000")
	w.Write(out)
}

// serviceRPC runs receive-pack or upload-pack with the request as its input
// and its output streamed back (the hook's build output arrives as it happens).
func (s *Service) serviceRPC(w http.ResponseWriter, r *http.Request, service string, vm *store.VM, tok *store.Token) {
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = gz
	}
	w.Header().Set("Content-Type", "application/x-"+service+"-result")
	w.Header().Set("Cache-Control", "no-cache")
	// git's output (a refusal, a hook's) may come before the pack is read
	// whole: reading must go on after the answer has begun.
	http.NewResponseController(w).EnableFullDuplex()
	err := s.runGit(r.Context(), gitRun{Service: service, VM: vm, Token: tok, Stateless: true,
		Protocol: r.Header.Get("Git-Protocol"), Stdin: body, Stdout: flushWriter{w}})
	var refused *PushRefused
	switch {
	case errors.As(err, &refused):
		refuseRPC(w, body, "fcm: "+refused.Msg)
	case errors.Is(err, errGitStart):
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// refuseRPC answers a receive-pack request git was not run for with msg, in
// the protocol, so git prints it: on the side band's error channel when the
// client asked for one in its first command (as every git since 1.6 does),
// else as an ERR line.
func refuseRPC(w http.ResponseWriter, body io.Reader, msg string) {
	var caps string
	var n [4]byte
	if _, err := io.ReadFull(body, n[:]); err == nil {
		if l, err := strconv.ParseUint(string(n[:]), 16, 16); err == nil && l > 4 {
			line := make([]byte, l-4)
			if _, err := io.ReadFull(body, line); err == nil {
				_, caps, _ = strings.Cut(string(line), "\x00")
			}
		}
	}
	if strings.Contains(" "+caps+" ", " side-band-64k ") || strings.Contains(" "+caps+" ", " side-band ") {
		io.WriteString(w, pktLine("\x03"+msg+"\n"))
		return
	}
	io.WriteString(w, pktLine("ERR "+msg+"\n"))
}

type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}
