package deploy

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

const zeroRev = "0000000000000000000000000000000000000000"

// RefUpdate is one line git gives the pre-receive hook.
type RefUpdate struct{ Old, New, Ref string }

// ReadRefUpdates parses the hook's standard input.
func ReadRefUpdates(r io.Reader) ([]RefUpdate, error) {
	var out []RefUpdate
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			return nil, fmt.Errorf("pre-receive: bad line %q", sc.Text())
		}
		out = append(out, RefUpdate{Old: f[0], New: f[1], Ref: f[2]})
	}
	return out, sc.Err()
}

// DeployRef picks the one update to deploy: main or master, not deleted. Any
// other ref is refused with a message that says what to push instead.
func DeployRef(updates []RefUpdate) (RefUpdate, error) {
	var deploy []RefUpdate
	for _, u := range updates {
		branch, isBranch := strings.CutPrefix(u.Ref, "refs/heads/")
		switch {
		case !isBranch:
			return u, fmt.Errorf("fcm deploys branches, not %s: push main or master (git push fcm main)", u.Ref)
		case branch != "main" && branch != "master":
			return u, fmt.Errorf("fcm deploys main or master only; the branch %q was not pushed. To deploy it: git push fcm %s:main", branch, branch)
		case u.New == zeroRev:
			return u, fmt.Errorf("deleting %s is not allowed: it is what runs", branch)
		}
		deploy = append(deploy, u)
	}
	switch len(deploy) {
	case 0:
		return RefUpdate{}, fmt.Errorf("nothing to deploy")
	case 1:
		return deploy[0], nil
	}
	return RefUpdate{}, fmt.Errorf("push main or master, not both at once")
}
