package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/dist"
	"github.com/fcmhost/fcm/internal/store"
)

// downloadRoutes are the client's downloads, public (the install step runs
// before anyone has a token): the tarballs make release builds, and the
// script that picks the right one.
func (s *Server) downloadRoutes() map[string]route {
	return map[string]route{
		"GET /releases/{file}": {rule: rulePublic, h: (*Server).serveRelease},
		"GET /install.sh":      {rule: rulePublic, h: (*Server).installScript},
	}
}

// versionHeader tells a client with a valid token the daemon's version, so
// the CLI can say when it differs from its own. The guard calls it once the
// token is checked: to anyone else the daemon is no fingerprint.
func (s *Server) versionHeader(w http.ResponseWriter) {
	if s.Version != "" {
		w.Header().Set(dist.VersionHeader, s.Version)
	}
}

// serveRelease sends a client tarball (any spelling ParseTarball accepts:
// fcm-macos-aarch64.tar.gz is fcm-darwin-arm64.tar.gz) or SHA256SUMS. Only
// those names are looked up in ReleasesDir, so no other path can be reached.
func (s *Server) serveRelease(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	name := r.PathValue("file")
	if name == dist.SumsFile {
		s.serveReleaseFile(w, r, name, "text/plain; charset=utf-8")
		return
	}
	p, err := dist.ParseTarball(name)
	if err != nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, err.Error())
		return
	}
	w.Header().Set("Content-Disposition", `attachment; filename="`+p.Tarball()+`"`)
	s.serveReleaseFile(w, r, p.Tarball(), "application/gzip")
}

func (s *Server) serveReleaseFile(w http.ResponseWriter, r *http.Request, name, contentType string) {
	if s.ReleasesDir == "" {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this daemon serves no client downloads: it runs without --releases-dir")
		return
	}
	f, err := os.Open(filepath.Join(s.ReleasesDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf(
			"no %s in %s: the host's admin must run 'make release RELEASES=%s' in fcm's source tree",
			name, s.ReleasesDir, s.ReleasesDir))
		return
	}
	if err != nil {
		s.logger().Error("client download", "file", name, "err", err)
		writeError(w, http.StatusInternalServerError, api.CodeInternal, "cannot read "+name+" (the daemon's log says why)")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		writeError(w, http.StatusInternalServerError, api.CodeInternal, name+" is not a file on this host")
		return
	}
	w.Header().Set("Content-Type", contentType)
	// make release replaces the files under the same names: revalidate.
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, fi.ModTime(), f) // Content-Length, ranges, HEAD
}

// installScript sends the script that installs the client from this
// daemon's public URL.
func (s *Server) installScript(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	script, err := dist.InstallScript(publicURL(r))
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/x-shellscript")
	w.Header().Set("Cache-Control", "no-store") // it names the host it was asked at
	w.Write(script)
}

// publicURL is this daemon's URL as the client reached it: scheme and host of
// the request, or those Caddy forwarded (X-Forwarded-Proto and -Host, trusted
// from this host only, as forwardedFor is). The status page shows
// dist.InstallCommand(publicURL(r)).
func publicURL(r *http.Request) string {
	scheme, host := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if fromLoopback(r) {
		if p := firstValue(r.Header.Get("X-Forwarded-Proto")); p == "http" || p == "https" {
			scheme = p
		}
		if h := firstValue(r.Header.Get("X-Forwarded-Host")); h != "" {
			host = h
		}
	}
	return scheme + "://" + host
}

// firstValue is the first of a header's comma-separated values (the one the
// first proxy set).
func firstValue(v string) string {
	first, _, _ := strings.Cut(v, ",")
	return strings.TrimSpace(first)
}
