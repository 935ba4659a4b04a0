// Package buildpack builds a pushed app inside its VM, Heroku-style: it detects
// the runtimes from the app's files (requirements.txt or pyproject.toml,
// package.json, bun.lock, Gemfile), installs dependencies into directories keyed
// by their lockfiles (so an unchanged lockfile installs nothing), runs the build
// script, and reads the Procfile.
package buildpack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fcmhost/fcm/internal/release"
)

// Builder builds one pushed tree in place.
type Builder struct {
	Dir     string            // the build's directory (the pushed tree)
	Build   int               // its number
	Env     map[string]string // the app's config vars
	Out     io.Writer         // the pusher's terminal
	AsApp   bool              // run tools as the app user (in a VM: always)
	DepsDir string            // default release.DepsDir
	Cache   string            // default release.CacheDir

	res release.Result
}

// Error is a build failure whose message is meant for the person pushing.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func failf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

func (b *Builder) step(format string, args ...any) {
	fmt.Fprintf(b.Out, "-----> "+format+"\n", args...)
}

func (b *Builder) note(format string, args ...any) {
	fmt.Fprintf(b.Out, "       "+format+"\n", args...)
}

func (b *Builder) has(name string) bool {
	_, err := os.Stat(filepath.Join(b.Dir, name))
	return err == nil
}

func (b *Builder) read(name string) []byte {
	data, _ := os.ReadFile(filepath.Join(b.Dir, name))
	return data
}

// Run builds the tree and returns what to run; the result is also written to
// the build's directory for the supervisor.
func (b *Builder) Run(ctx context.Context) (release.Result, error) {
	if b.DepsDir == "" {
		b.DepsDir = release.DepsDir
	}
	if b.Cache == "" {
		b.Cache = release.CacheDir
	}
	b.res = release.Result{Build: b.Build, Env: map[string]string{}}
	var procs map[string]string
	if b.has("Procfile") {
		var err error
		if procs, err = release.ParseProcfile(string(b.read("Procfile"))); err != nil {
			return b.res, failf("%v", err)
		}
	}
	js, err := b.detectJS()
	if err != nil {
		return b.res, err
	}
	python := b.has("requirements.txt") || b.has("pyproject.toml")
	ruby := b.has("Gemfile")
	if js == "" && !python && !ruby {
		if procs == nil {
			return b.res, failf("No app detected: add a Procfile (e.g. 'web: python3 -m http.server $PORT'), or a requirements.txt, pyproject.toml, package.json or Gemfile")
		}
		b.step("No runtime detected (no requirements.txt, package.json or Gemfile): running the Procfile with the image's tools")
	}
	// JavaScript first: Python and Ruby apps may use it for their assets.
	switch js {
	case "bun":
		if err := b.bun(ctx); err != nil {
			return b.res, err
		}
	case "npm":
		if err := b.npm(ctx); err != nil {
			return b.res, err
		}
	}
	if python {
		if err := b.python(ctx); err != nil {
			return b.res, err
		}
	}
	if ruby {
		if err := b.ruby(ctx); err != nil {
			return b.res, err
		}
	}
	if err := b.processes(procs, js); err != nil {
		return b.res, err
	}
	data, _ := json.MarshalIndent(b.res, "", "  ")
	if err := os.WriteFile(filepath.Join(b.Dir, release.BuildInfo), data, 0o644); err != nil {
		return b.res, err
	}
	return b.res, nil
}

// processes settles the process types: the Procfile's, else a runtime's default.
func (b *Builder) processes(procs map[string]string, js string) error {
	b.step("Discovering process types")
	if procs != nil {
		b.res.Release = procs["release"]
		delete(procs, "release")
		b.res.Processes = procs
		types := b.res.Types()
		if b.res.Release != "" {
			types = append(types, "release")
		}
		b.note("Procfile declares types -> %s", strings.Join(types, ", "))
	} else {
		b.res.Processes = map[string]string{}
		switch {
		case js != "" && b.packageScript("start"):
			b.res.Processes["web"] = map[string]string{"npm": "npm start", "bun": "bun run start"}[js]
		case b.has("config.ru") && b.has("Gemfile"):
			b.res.Processes["web"] = "bundle exec rackup --host 0.0.0.0 --port $PORT"
		}
		if len(b.res.Processes) > 0 {
			b.note("Default types for this app -> web (%s)", b.res.Processes["web"])
		}
	}
	if len(b.res.Processes) == 0 {
		return failf("No process to run: add a Procfile with a line like 'web: <command>' (the app gets its port in $PORT)")
	}
	return nil
}

func (b *Builder) packageScript(name string) bool {
	var pkg struct {
		Scripts map[string]string `json:"scripts"`
	}
	json.Unmarshal(b.read("package.json"), &pkg)
	return pkg.Scripts[name] != ""
}

// env is the environment of build tools: the config vars over a clean base.
func (b *Builder) env(extra ...string) []string {
	m := map[string]string{
		"HOME": release.Home, "USER": release.User, "LANG": "C.UTF-8",
		"PATH": "/usr/local/bin:/usr/bin:/bin", "CI": "true",
	}
	for k, v := range b.Env {
		m[k] = v
	}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// depsDir returns the directory for dependencies keyed by parts, and whether a
// complete install is already there. An incomplete one is removed.
func (b *Builder) depsDir(kind string, parts ...[]byte) (string, bool, error) {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	dir := filepath.Join(b.DepsDir, kind+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	b.res.Deps = append(b.res.Deps, dir)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		os.Chtimes(dir, timeNow(), timeNow()) // recently used: pruned last
		return dir, true, nil
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	if b.AsApp {
		os.Chown(dir, release.UID, release.GID)
	}
	return dir, false, nil
}

func markComplete(dir string) error {
	return os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644)
}

func (b *Builder) cacheDir(kind string) string {
	d := filepath.Join(b.Cache, kind)
	os.MkdirAll(d, 0o755)
	if b.AsApp {
		os.Chown(d, release.UID, release.GID)
	}
	return d
}

// copyInto copies the named files of the app (those that exist) into dir.
func (b *Builder) copyInto(dir string, names ...string) error {
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(b.Dir, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		if b.AsApp {
			os.Chown(p, release.UID, release.GID)
		}
	}
	return nil
}
