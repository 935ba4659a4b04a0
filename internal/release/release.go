// Package release holds what the daemon and a VM's guest agree on about an app:
// where its files live in the guest, the spec of a release (which build, which
// config vars, which port), the build's result, and the Procfile's grammar.
package release

import (
	"bufio"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Paths in the guest.
const (
	Root       = "/srv/app"
	BuildsDir  = Root + "/builds" // builds/<n>: the pushed tree, built in place
	DepsDir    = Root + "/deps"   // deps/<kind>-<hash>: dependencies, keyed by their lockfiles
	CacheDir   = Root + "/cache"  // download caches (pip, npm, bun, gems)
	LogDir     = Root + "/log"
	LogFile    = LogDir + "/app.log"
	Current    = Root + "/current.json" // the release the supervisor runs
	BuildInfo  = ".fcm-build.json"      // in a build's directory: its Result
	SocketPath = "/run/fcm/supervisor.sock"
	User       = "app" // builds and processes run as this user
	UID, GID   = 1000, 1000
	Home       = "/home/app"
	// KeepBuilds is how many builds the guest keeps for rollbacks.
	KeepBuilds = 5
	// DefaultPort is the public port before the first deploy.
	DefaultPort = 3000
)

// DefaultHealthTimeout is how long a new web process has to answer, in seconds,
// unless the config var HealthTimeoutVar says otherwise.
const (
	DefaultHealthTimeout = 60
	HealthTimeoutVar     = "FCM_HEALTHCHECK_TIMEOUT"
)

// Spec is one release as the daemon hands it to the guest: which build runs,
// with which config vars, on which port.
type Spec struct {
	Version int               `json:"version"`
	Build   int               `json:"build"` // builds/<Build>
	Commit  string            `json:"commit,omitempty"`
	Port    int               `json:"port"`
	Env     map[string]string `json:"env,omitempty"` // the app's config vars
	// RunRelease runs the Procfile's release command before the switch.
	RunRelease bool `json:"run_release,omitempty"`
}

// HealthTimeout is the spec's health-check timeout in seconds.
func (s Spec) HealthTimeout() int {
	var n int
	if _, err := fmt.Sscanf(s.Env[HealthTimeoutVar], "%d", &n); err == nil && n > 0 {
		return n
	}
	return DefaultHealthTimeout
}

// BuildDir is the directory of build n in the guest.
func BuildDir(n int) string { return fmt.Sprintf("%s/%d", BuildsDir, n) }

// Result is what a build leaves in its directory: the processes to run and the
// environment the runtimes need (virtualenv, bundle path, PATH).
type Result struct {
	Build     int               `json:"build"`
	Processes map[string]string `json:"processes"` // type -> command, release excluded
	Release   string            `json:"release,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	PathAdd   []string          `json:"path_add,omitempty"` // directories put before PATH
	Runtimes  []string          `json:"runtimes,omitempty"`
	Deps      []string          `json:"deps,omitempty"` // dependency directories it uses (kept while it is)
}

// Types lists the process types in a stable order: web first.
func (r Result) Types() []string {
	var out []string
	for t := range r.Processes {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if (out[i] == "web") != (out[j] == "web") {
			return out[i] == "web"
		}
		return out[i] < out[j]
	})
	return out
}

var procTypeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)

// ParseProcfile reads "type: command" lines; blank lines and # comments are
// skipped. A type named twice, a bad type or a line without a command is an
// error naming its line.
func ParseProcfile(text string) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		typ, cmd, ok := strings.Cut(line, ":")
		typ, cmd = strings.TrimSpace(typ), strings.TrimSpace(cmd)
		switch {
		case !ok:
			return nil, fmt.Errorf("Procfile line %d: want 'type: command', got %q", n, line)
		case !procTypeRE.MatchString(typ):
			return nil, fmt.Errorf("Procfile line %d: process type %q: use letters, digits, - and _", n, typ)
		case cmd == "":
			return nil, fmt.Errorf("Procfile line %d: %s has no command", n, typ)
		case out[typ] != "":
			return nil, fmt.Errorf("Procfile line %d: %s is declared twice", n, typ)
		}
		out[typ] = cmd
	}
	return out, sc.Err()
}

// DeployRequest is the first line the daemon sends to the guest agent
// (`fcm guest deploy`); when Build is set, the pushed tree follows as a tar.
type DeployRequest struct {
	Spec  Spec `json:"spec"`
	Build bool `json:"build"`
}
