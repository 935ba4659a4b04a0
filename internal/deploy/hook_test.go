package deploy

import (
	"strings"
	"testing"
)

func TestDeployRef(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	for _, tc := range []struct {
		in   string
		ref  string
		fail string
	}{
		{zeroRev + " " + a + " refs/heads/main", "refs/heads/main", ""},
		{a + " " + b + " refs/heads/master", "refs/heads/master", ""},
		{zeroRev + " " + a + " refs/heads/feature", "", `the branch "feature" was not pushed. To deploy it: git push fcm feature:main`},
		{zeroRev + " " + a + " refs/tags/v1", "", "not refs/tags/v1"},
		{a + " " + zeroRev + " refs/heads/main", "", "deleting main is not allowed"},
		{zeroRev + " " + a + " refs/heads/main\n" + zeroRev + " " + a + " refs/heads/master", "", "not both"},
	} {
		ups, err := ReadRefUpdates(strings.NewReader(tc.in + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		u, err := DeployRef(ups)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.fail)
			}
			continue
		}
		if err != nil || u.Ref != tc.ref {
			t.Errorf("%q: %v %v", tc.in, u, err)
		}
	}
}
