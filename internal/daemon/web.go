package daemon

import (
	"bytes"
	"io/fs"
	"net/http"
	"slices"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/dist"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/web"
)

// webRoutes are the status page's routes (issue 13): "/" decides itself
// (signed out: the sign-in view), a VM's page is its owner's and the admin's.
func (s *Server) webRoutes() map[string]route {
	return map[string]route{
		"GET /{$}":            {rule: rulePublic, h: (*Server).statusPage},
		"GET /vms/{name}":     {rule: ruleVM, h: (*Server).vmPage},
		"GET /static/app.js":  {rule: rulePublic, h: staticFile("app.js", "text/javascript; charset=utf-8")},
		"GET /static/app.css": {rule: rulePublic, h: staticFile("app.css", "text/css; charset=utf-8")},
	}
}

// pageCSP allows the page only its own script, style and API: no inline
// script, no other site's, no framing.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// signInErrors says the status page's ?error= reasons for people.
var signInErrors = map[string]string{
	"invalid_token":  "That token is not valid: it was revoked or has expired, or its user is no longer allowed.",
	"login_disabled": "Sign-in is not set up on this daemon (no OIDC provider): paste a token instead.",
}

// indexPage is what the status page shows.
type indexPage struct {
	Title        string
	Who          string // the email, or "admin"; "" when signed out
	Admin        bool
	Error        string
	LoginEnabled bool
	VMs          []vmRow
	Blank        vmRow // the row the script fills for a VM made after the page
	Install      string
	Downloads    []download // the client tarballs, linked from the page
}

// vmRow is one VM in the list.
type vmRow struct {
	api.VM
	Admin   bool         // the viewer is the admin: the row has an owner cell
	Release *api.Release // the newest release, if any
}

// vmPage is one VM's page.
type vmPage struct {
	Title       string
	Who         string
	VM          api.VM
	Releases    []api.Release
	ConfigNames []string // names only: values may be secrets
	Usage       *usageView
}

// usageView is what a running VM uses, as the VM page shows it: its newest
// sample and its last hour's CPU and memory as SVG polyline points.
type usageView struct {
	CPUPercent              float64
	Memory, MemorySize      int64
	Disk, DiskSize          int64
	In, Out                 int64
	CPUPoints, MemoryPoints string
	ChartWidth, ChartHeight int
	ChartMid                int // the 50% line's y
	Samples                 int
}

// sessionToken is the browser's session, if its cookie holds a valid token;
// nil if there is none (the page then shows the sign-in view).
func (s *Server) sessionToken(r *http.Request) *store.Token {
	secret := auth.SessionSecret(r)
	if secret == "" {
		return nil
	}
	var tok *store.Token
	if s.Store.View(func(tx *store.Tx) (err error) { tok, _, err = tx.Authenticate(secret); return }) != nil {
		return nil
	}
	return tok
}

// who names tok's holder: the user's email, or "admin".
func (s *Server) who(tok *store.Token) string {
	if tok.User == "" {
		return "admin"
	}
	var u *store.User
	if err := s.Store.View(func(tx *store.Tx) (err error) { u, err = tx.User(tok.User); return }); err != nil || u.Email == "" {
		return tok.User
	}
	return u.Email
}

// statusPage is GET /: the caller's VMs (the admin's: everyone's), or the
// sign-in view.
func (s *Server) statusPage(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	p := indexPage{Title: "fcm", LoginEnabled: s.Auth != nil, Install: dist.InstallCommand(publicURL(r)), Downloads: downloads()}
	tok := s.sessionToken(r)
	if tok == nil {
		p.Error = signInErrors[r.URL.Query().Get("error")]
		s.render(w, "index", p)
		return
	}
	p.Who, p.Admin = s.who(tok), tok.Admin
	p.Blank = vmRow{Admin: tok.Admin}
	vms, err := s.Store.ListVMs()
	if err != nil {
		s.fail(w, err)
		return
	}
	owners := s.ownerNames(tok)
	for _, v := range vms {
		if !visible(tok, v) {
			continue
		}
		row := vmRow{VM: s.toAPI(v), Admin: tok.Admin}
		row.Owner = owners(v)
		row.Release = s.lastRelease(v)
		p.VMs = append(p.VMs, row)
	}
	s.render(w, "index", p)
}

// vmPage is GET /vms/{name}: one VM's releases, config var names, and (by
// the script) its sessions and live logs.
func (s *Server) vmPage(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	p := vmPage{Title: v.Name + " · fcm", Who: s.who(tok), VM: s.toAPI(v), Releases: s.releases(v), Usage: s.usageView(v)}
	p.VM.Owner = s.ownerNames(tok)(v)
	if s.Deploys != nil {
		cfg, err := s.Deploys.Config(v)
		if err != nil {
			s.fail(w, err)
			return
		}
		for k := range cfg {
			p.ConfigNames = append(p.ConfigNames, k)
		}
		slices.Sort(p.ConfigNames)
	}
	s.render(w, "vm", p)
}

// releases are a VM's releases, newest first; none when deploys are off or
// the store fails (the page shows the rest).
func (s *Server) releases(vm *store.VM) []api.Release {
	if s.Deploys == nil {
		return nil
	}
	rels, err := s.Deploys.Releases(vm)
	if err != nil {
		s.logger().Warn("releases for the status page", "vm", vm.Name, "err", err)
	}
	return rels
}

// lastRelease is a VM's newest release, nil for none (or when deploys are off
// or the store fails): all the status page's list shows, read alone.
func (s *Server) lastRelease(vm *store.VM) *api.Release {
	if s.Deploys == nil {
		return nil
	}
	rel, err := s.Deploys.LastRelease(vm)
	if err != nil {
		s.logger().Warn("release for the status page", "vm", vm.Name, "err", err)
	}
	return rel
}

// render writes a page with the headers every page has.
func (s *Server) render(w http.ResponseWriter, name string, data any) {
	var buf bytes.Buffer
	if err := web.Pages.ExecuteTemplate(&buf, name, data); err != nil {
		s.logger().Error("render page", "page", name, "err", err)
		writeError(w, http.StatusInternalServerError, api.CodeInternal, "the page failed to render: "+err.Error())
		return
	}
	pageHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

// pageHeaders are the security headers of the web's responses.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
}

// staticFile serves one of the page's embedded files.
func staticFile(name, contentType string) func(*Server, http.ResponseWriter, *http.Request, *store.Token) {
	data, err := fs.ReadFile(web.Static, name)
	if err != nil {
		panic("web: no static file " + name)
	}
	return func(_ *Server, w http.ResponseWriter, r *http.Request, _ *store.Token) {
		pageHeaders(w)
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
	}
}

// download is one client tarball as the page links it.
type download struct {
	ID, Label, Path string
}

// downloads lists the client tarballs the daemon serves, for the page.
func downloads() []download {
	names := map[string]string{"linux": "Linux", "darwin": "macOS", "amd64": "x86_64", "arm64": "arm64"}
	var out []download
	for _, p := range dist.Platforms {
		out = append(out, download{ID: "download-" + p.OS + "-" + p.Arch, Label: names[p.OS] + " " + names[p.Arch], Path: "/releases/" + p.Tarball()})
	}
	return out
}
