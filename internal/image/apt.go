package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// apt runs apt-get and apt-cache against a private configuration of Debian's
// archive, so the kernel and busybox come from the same release as the rootfs on
// any Debian or Ubuntu host, whatever the host's own sources say.
type apt struct {
	dir    string // private state: sources, lists, downloads
	mirror string
	suite  string
}

func newApt(cacheDir, mirror, suite string) (*apt, error) {
	a := &apt{dir: filepath.Join(cacheDir, "apt-"+suite), mirror: mirror, suite: suite}
	for _, d := range []string{"lists/partial", "archives/partial", "etc"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	sources := fmt.Sprintf("deb [arch=amd64 signed-by=%s] %s %s main\ndeb [arch=amd64 signed-by=%s] %s %s-updates main\n",
		keyring, mirror, suite, keyring, mirror, suite)
	if err := os.WriteFile(filepath.Join(a.dir, "etc", "sources.list"), []byte(sources), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// keyring is Debian's archive keyring, from the debian-archive-keyring package
// (which debootstrap needs too).
const keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

func (a *apt) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "etc", "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::State::status=/dev/null",
		"-o", "Dir::Cache=" + a.dir,
		"-o", "Dir::Cache::archives=" + filepath.Join(a.dir, "archives"),
		"-o", "APT::Architecture=amd64",
		"-o", "APT::Architectures::=amd64",
		"-o", "Acquire::Languages=none",
		"-o", "APT::Sandbox::User=root",
		"-o", "Debug::NoLocking=1",
	}
}

func (a *apt) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, append(a.options(), args...)...)
	cmd.Dir = filepath.Join(a.dir, "archives")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return stdout.String(), nil
}

func (a *apt) update(ctx context.Context) error {
	_, err := a.run(ctx, "apt-get", "-q", "update")
	return err
}

// resolve follows a metapackage to the package it depends on (the versioned
// kernel image of linux-image-cloud-amd64) and returns that name and its version.
func (a *apt) resolve(ctx context.Context, pkg string) (name, version string, err error) {
	out, err := a.run(ctx, "apt-cache", "depends", "--no-recommends", "--no-suggests", pkg)
	if err != nil {
		return "", "", err
	}
	name = pkg
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if dep, ok := strings.CutPrefix(line, "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			name = dep
			break
		}
	}
	version, err = a.version(ctx, name)
	return name, version, err
}

func (a *apt) version(ctx context.Context, pkg string) (string, error) {
	out, err := a.run(ctx, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no version", pkg)
}

// fetch downloads pkg=version and unpacks it into dir.
func (a *apt) fetch(ctx context.Context, pkg, version, dir string) error {
	if _, err := a.run(ctx, "apt-get", "-q", "download", pkg+"="+version); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(a.dir, "archives", pkg+"_*.deb"))
	if len(debs) == 0 {
		return fmt.Errorf("apt-get download %s: no .deb appeared", pkg)
	}
	deb := debs[len(debs)-1]
	defer os.Remove(deb)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", filepath.Base(deb), err, lastLines(string(out), 5))
	}
	return nil
}

// lastLines keeps the end of a tool's output for an error message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
