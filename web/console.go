// Package web holds the daemon's web pages and their files, embedded in the
// binary: the status page and the web console (xterm.js).
package web

import (
	"embed"
	"html/template"
	"io/fs"
)

// consoleFiles are the console's page, its script, and the terminal files
// committed in xterm/ (`make web` checks them against the npm lockfile).
//
//go:embed templates/console.html static/console.js xterm
var consoleFiles embed.FS

// ConsoleTerminalFiles are the xterm.js files the console page loads.
var ConsoleTerminalFiles = []string{"xterm.js", "xterm.css", "addon-fit.js"}

// ConsolePage is the web console's page. Its data is a ConsoleData.
var ConsolePage = template.Must(template.ParseFS(consoleFiles, "templates/console.html"))

// ConsoleData is what the console page shows: the VM and the session it
// attaches to.
type ConsoleData struct {
	VM      string
	Session string
}

// ConsoleAssets are the files the console page loads, by name: console.js
// and the terminal files.
func ConsoleAssets() fs.FS {
	return consoleAssets{}
}

// consoleAssets maps console.js to static/ and the terminal files to xterm/,
// so the page names them all in one flat directory and nothing else is served.
type consoleAssets struct{}

func (consoleAssets) Open(name string) (fs.File, error) {
	if name == "console.js" {
		return consoleFiles.Open("static/console.js")
	}
	for _, f := range ConsoleTerminalFiles {
		if name == f {
			return consoleFiles.Open("xterm/" + f)
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}
