package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/dist"
)

// versionNoticeFile remembers, in the home directory, which daemon versions
// the user was told about: one "<host> <version>" line per daemon (mode 0600,
// like the token file beside it).
const versionNoticeFile = ".fcm-version-notice"

// tellVersion runs when a command finishes: if a daemon answered it with a
// version other than this client's, it says so on w, once per daemon version,
// with the command that updates the client.
func tellVersion(w io.Writer) {
	host, theirs := client.DaemonVersion()
	if theirs == "" {
		return
	}
	path, err := homeFile(versionNoticeFile)
	if err != nil {
		return
	}
	versionNotice(w, path, Version, host, theirs)
}

// versionNotice tells w that this client (mine) and the daemon at host
// (theirs) differ, unless either is a dev build or the file at path says it
// was told already.
func versionNotice(w io.Writer, path, mine, host, theirs string) {
	if theirs == "" || mine == theirs || mine == "dev" || theirs == "dev" {
		return
	}
	told := readVersionNotices(path)
	if told[host] == theirs {
		return
	}
	fmt.Fprintf(w, "fcm: this client is %s but the daemon at %s is %s: update with %s\n",
		mine, host, theirs, dist.InstallCommand(host))
	told[host] = theirs
	var lines []string
	for h, v := range told {
		lines = append(lines, h+" "+v)
	}
	slices.Sort(lines)
	// Not remembered (no writable home): told again next time, which is
	// better than never.
	client.WriteTokenFile(path, strings.Join(lines, "\n"))
}

// readVersionNotices reads the file of versionNotice: host -> version told.
func readVersionNotices(path string) map[string]string {
	told := map[string]string{}
	data, err := os.ReadFile(path)
	if err != nil {
		return told
	}
	for _, line := range strings.Split(string(data), "\n") {
		if host, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			told[host] = v
		}
	}
	return told
}
