// Package dist is how fcm's client is distributed: the platforms it is built
// for, the names of their release tarballs (with the aliases people type:
// macos, x86_64, aarch64), the install script the daemon serves, and the
// header in which the daemon tells clients its version.
package dist

import (
	"fmt"
	"strings"
)

// VersionHeader is the response header in which the daemon says its version
// (to requests with a valid token only), so a client can tell it differs.
const VersionHeader = "Fcm-Version"

// SumsFile is the checksum file beside the tarballs (sha256sum's format).
const SumsFile = "SHA256SUMS"

// Platform is one OS and architecture the client is built for, in Go's
// names (GOOS, GOARCH).
type Platform struct {
	OS, Arch string
}

// Platforms are the client builds `make release` makes and the daemon serves.
var Platforms = []Platform{
	{"linux", "amd64"}, {"linux", "arm64"},
	{"darwin", "amd64"}, {"darwin", "arm64"},
}

// Tarball is the release file of p: fcm-<os>-<arch>.tar.gz, holding one
// executable named fcm.
func (p Platform) Tarball() string { return "fcm-" + p.OS + "-" + p.Arch + ".tar.gz" }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// osAliases and archAliases map what people type (the design's macos,
// uname -m's x86_64 and aarch64) to Go's names.
var (
	osAliases   = map[string]string{"linux": "linux", "darwin": "darwin", "macos": "darwin"}
	archAliases = map[string]string{"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}
)

// ValidForms says which tarball names ParseTarball accepts, for errors.
const ValidForms = "fcm-<os>-<arch>.tar.gz with <os> linux, darwin or macos and <arch> amd64, x86_64, arm64 or aarch64"

// ParseTarball returns the platform a tarball name asks for, in any case and
// with the aliases: fcm-macos-aarch64.tar.gz is darwin/arm64.
func ParseTarball(name string) (Platform, error) {
	lower := strings.ToLower(name)
	rest, ok := strings.CutPrefix(lower, "fcm-")
	if ok {
		rest, ok = strings.CutSuffix(rest, ".tar.gz")
	}
	var osName, arch string
	if ok {
		osName, arch, ok = strings.Cut(rest, "-")
	}
	p := Platform{OS: osAliases[osName], Arch: archAliases[arch]}
	if !ok || p.OS == "" || p.Arch == "" {
		return Platform{}, fmt.Errorf("no client download named %q: the downloads are %s", name, ValidForms)
	}
	return p, nil
}

// InstallCommand is the one line that installs the client from the daemon
// at baseURL (e.g. https://fcm.example.com).
func InstallCommand(baseURL string) string {
	return "curl -sL " + strings.TrimRight(baseURL, "/") + "/install.sh | sh"
}
