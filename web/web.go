package web

// The status page's HTML templates and static files (script and style) are
// embedded in the binary: the daemon serves them with no files on disk.

import (
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"strings"
	"time"
)

//go:embed templates/layout.html templates/index.html templates/vm.html static/app.js static/app.css
var files embed.FS

// funcs are the helpers the templates call.
var funcs = template.FuncMap{
	"mib":   func(n int) string { return size(int64(n) << 20) },
	"bytes": size,
	"short": func(s string) string {
		if len(s) > 7 {
			return s[:7]
		}
		return s
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
}

// size is n bytes for people: "512M", "2G".
func size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<30:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(n)/(1<<30)), ".0") + "G"
	case n < 1<<20:
		return fmt.Sprintf("%dK", n>>10)
	default:
		return fmt.Sprintf("%dM", n>>20)
	}
}

// Pages are the status page's templates: "index" (the list of VMs, or the
// sign-in view) and "vm" (one VM). Parsed once; a mistake in them panics at
// start, which the package's users' tests catch.
var Pages = template.Must(template.New("").Funcs(funcs).ParseFS(files, "templates/*.html"))

// Static is the page's static files: app.js and app.css at its root.
var Static = func() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic(err)
	}
	return sub
}()
