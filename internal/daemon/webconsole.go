package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/web"
)

// webConsoleRoutes are the web console's routes (issue 13): the page, for
// whoever may see the VM, and its script and terminal files, for anyone.
func (s *Server) webConsoleRoutes() map[string]route {
	return map[string]route{
		"GET /vms/{name}/console":       {rule: ruleVM, h: (*Server).consolePage},
		"GET /static/console/{file...}": {rule: rulePublic, h: (*Server).consoleAsset},
	}
}

// consoleCSP lets the console page run only its own scripts and talk only to
// its own origin (the API and the attach WebSocket). Styles may be inline:
// xterm.js writes its own.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
	"connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// webSessionID is the session the console page opens unless told another:
// web-<vm>, cut to a session id's 63 characters.
func webSessionID(vm string) string {
	id := "web-" + vm
	if len(id) > 63 {
		id = strings.TrimRight(id[:63], "-")
	}
	return id
}

// consolePage is a full-window terminal on session ?session= (web-<vm> by
// default) of the VM; its script creates the session if missing and attaches.
func (s *Server) consolePage(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	id := r.URL.Query().Get("session")
	if id == "" {
		id = webSessionID(v.Name)
	} else if !validSessionID(w, id) {
		return
	}
	var buf bytes.Buffer
	if err := web.ConsolePage.Execute(&buf, web.ConsoleData{VM: v.Name, Session: id}); err != nil {
		s.fail(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", consoleCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	w.Write(buf.Bytes())
}

// consoleAsset serves one of the console page's files, with an ETag so a
// browser fetches xterm.js again only when the binary changed it.
func (s *Server) consoleAsset(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	name := r.PathValue("file")
	f, err := web.ConsoleAssets().Open(name)
	if err != nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no file "+name+" (the terminal's files are built by make web)")
		return
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		s.fail(w, fs.ErrInvalid)
		return
	}
	h := w.Header()
	h.Set("ETag", assetETag(name, rs))
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, name, time.Time{}, rs)
}

var (
	assetETagsMu sync.Mutex
	assetETags   = map[string]string{}
)

// assetETag is the hash of an embedded file's content, computed once.
func assetETag(name string, rs io.ReadSeeker) string {
	assetETagsMu.Lock()
	defer assetETagsMu.Unlock()
	if tag, ok := assetETags[name]; ok {
		return tag
	}
	h := sha256.New()
	io.Copy(h, rs)
	rs.Seek(0, io.SeekStart)
	tag := `"` + hex.EncodeToString(h.Sum(nil)[:12]) + `"`
	assetETags[name] = tag
	return tag
}
