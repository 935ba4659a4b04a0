package dist

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"
	"text/template"
)

// InstallScript is the POSIX sh script the daemon at baseURL serves at
// /install.sh: it picks the tarball for uname -s and uname -m, checks it
// against SHA256SUMS when the daemon has one, and puts fcm in
// ${FCM_INSTALL_DIR:-/usr/local/bin} (with sudo, saying so, when that is not
// writable). baseURL goes into the script, so only a plain http(s) URL of a
// host name or address is accepted.
func InstallScript(baseURL string) ([]byte, error) {
	baseURL = strings.TrimRight(baseURL, "/")
	if err := checkBaseURL(baseURL); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := installTemplate.Execute(&b, struct{ URL, Install string }{baseURL, InstallCommand(baseURL)}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// checkBaseURL accepts scheme://host[:port] and nothing a shell would read
// as more than a word.
func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
		return fmt.Errorf("base URL %q is not http(s)://host[:port]", s)
	}
	for _, c := range u.Host {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune(".-:[]", c)) {
			return fmt.Errorf("base URL %q: host has %q", s, c)
		}
	}
	return nil
}

// The script is one function called on its last line, so a download cut
// short runs nothing.
var installTemplate = template.Must(template.New("install.sh").Parse(`#!/bin/sh
# Installs the fcm client from the fcm daemon at {{.URL}}:
#   {{.Install}}
# FCM_INSTALL_DIR picks the directory (default /usr/local/bin).
set -eu

fcm_install() {
	url='{{.URL}}'
	dir="${FCM_INSTALL_DIR:-/usr/local/bin}"

	case "$(uname -s)" in
	Linux) os=linux ;;
	Darwin) os=darwin ;;
	*) fail "there is no fcm client for $(uname -s): there are builds for Linux and macOS" ;;
	esac
	case "$(uname -m)" in
	x86_64 | amd64) arch=amd64 ;;
	arm64 | aarch64) arch=arm64 ;;
	*) fail "there is no fcm client for $(uname -m): there are builds for x86_64 and arm64" ;;
	esac
	command -v curl >/dev/null 2>&1 || fail "curl is needed"
	tarball="fcm-$os-$arch.tar.gz"

	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "Downloading $url/releases/$tarball"
	download "$url/releases/$tarball" "$tmp/$tarball" || fail "$(cat "$tmp/error")"
	verify "$tmp" "$tarball"
	tar -xzf "$tmp/$tarball" -C "$tmp" fcm || fail "$tarball holds no fcm"
	chmod 0755 "$tmp/fcm"

	sudo=
	if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
		command -v sudo >/dev/null 2>&1 ||
			fail "$dir is not writable and there is no sudo: set FCM_INSTALL_DIR to a directory of yours, e.g. FCM_INSTALL_DIR=\$HOME/bin"
		echo "$dir is not writable by $(id -un): installing with sudo (FCM_INSTALL_DIR picks another directory)"
		sudo=sudo
		$sudo mkdir -p "$dir"
	fi
	# Beside the old one, then renamed over it: a running fcm is not disturbed.
	$sudo cp "$tmp/fcm" "$dir/.fcm.new.$$"
	$sudo chmod 0755 "$dir/.fcm.new.$$"
	$sudo mv -f "$dir/.fcm.new.$$" "$dir/fcm"

	echo "Installed $("$dir/fcm" version) as $dir/fcm"
	fcm="$dir/fcm"
	case ":$PATH:" in
	*":$dir:"*) fcm=fcm ;;
	*) echo "$dir is not on your PATH: add it, or run $dir/fcm" ;;
	esac
	echo "Next: $fcm login --host $url"
}

fail() {
	echo "fcm install: $*" >&2
	exit 1
}

# download URL FILE: fetches URL into FILE; on failure the daemon's error
# message is in $tmp/error.
download() {
	if ! code=$(curl -sSL -o "$2" -w '%{http_code}' "$1" 2>"$tmp/error"); then
		return 1
	fi
	[ "$code" = 200 ] && return 0
	msg=$(sed -n 's/.*"error": *"\([^"\\]*\(\\.[^"\\]*\)*\)".*/\1/p' "$2" | sed 's/\\"/"/g')
	echo "$1: HTTP $code: ${msg:-$(head -c 300 "$2")}" >"$tmp/error"
	return 1
}

# verify DIR TARBALL: checks TARBALL against the daemon's SHA256SUMS, when it
# has one and this system has a tool for it.
verify() {
	download "$url/releases/SHA256SUMS" "$1/SHA256SUMS" || return 0
	want=$(awk -v f="$2" '$2 == f || $2 == "*" f { print $1 }' "$1/SHA256SUMS")
	[ -n "$want" ] || return 0
	if command -v sha256sum >/dev/null 2>&1; then
		got=$(sha256sum "$1/$2" | awk '{ print $1 }')
	elif command -v shasum >/dev/null 2>&1; then
		got=$(shasum -a 256 "$1/$2" | awk '{ print $1 }')
	else
		return 0
	fi
	[ "$got" = "$want" ] || fail "$2 does not match the daemon's SHA256SUMS (sha256 $got, expected $want): download again, or ask the host's admin"
}

fcm_install
`))
