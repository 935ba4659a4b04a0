// Package web holds the daemon's web pages and their files, embedded in the
// binary: the status page and the web console (xterm.js).
package web

import (
	"embed"
	"html/template"
	"io/fs"
)

// consoleFiles are the console's page, its script, and the terminal files
// `make web` copies into vendor/ (only vendor/README when it has not run).
//
//go:embed templates/console.html static/console.js vendor
var consoleFiles embed.FS

// ConsoleVendorFiles are the xterm.js files the console page loads; all must
// be embedded for the terminal to work.
var ConsoleVendorFiles = []string{"xterm.js", "xterm.css", "addon-fit.js"}

// ConsolePage is the web console's page. Its data is a ConsoleData.
var ConsolePage = template.Must(template.ParseFS(consoleFiles, "templates/console.html"))

// ConsoleData is what the console page shows: the VM, the session it
// attaches to, and whether the terminal's files are built into the binary.
type ConsoleData struct {
	VM      string
	Session string
	Built   bool
}

// ConsoleAssets are the files the console page loads, by name: console.js
// and, once `make web` has run, the vendored terminal files.
func ConsoleAssets() fs.FS {
	return consoleAssets{}
}

// ConsoleBuilt reports whether every terminal file is embedded.
func ConsoleBuilt() bool {
	for _, f := range ConsoleVendorFiles {
		if _, err := fs.Stat(consoleFiles, "vendor/"+f); err != nil {
			return false
		}
	}
	return true
}

// consoleAssets maps console.js to static/ and the terminal files to vendor/,
// so the page names them all in one flat directory and nothing else is served.
type consoleAssets struct{}

func (consoleAssets) Open(name string) (fs.File, error) {
	if name == "console.js" {
		return consoleFiles.Open("static/console.js")
	}
	for _, f := range ConsoleVendorFiles {
		if name == f {
			return consoleFiles.Open("vendor/" + f)
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}
