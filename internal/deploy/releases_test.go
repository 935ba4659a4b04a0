package deploy

import "testing"

func TestConfigKeys(t *testing.T) {
	for key, ok := range map[string]bool{
		"DATABASE_URL": true, "_x": true, "PIP_INDEX_URL": true, "BUNDLE_MIRROR__HTTPS://RUBYGEMS__ORG/": true,
		"": false, "1ABC": false, "A B": false, "A=B": false, "A\x00": false, "é": false, "-X": false,
	} {
		if configKeyRE.MatchString(key) != ok {
			t.Errorf("%q: valid=%v, want %v", key, !ok, ok)
		}
	}
}
