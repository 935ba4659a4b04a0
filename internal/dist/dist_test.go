package dist

import (
	"strings"
	"testing"
)

func TestParseTarball(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Platform // zero: refused
	}{
		{"fcm-linux-amd64.tar.gz", Platform{"linux", "amd64"}},
		{"fcm-linux-arm64.tar.gz", Platform{"linux", "arm64"}},
		{"fcm-darwin-amd64.tar.gz", Platform{"darwin", "amd64"}},
		{"fcm-darwin-arm64.tar.gz", Platform{"darwin", "arm64"}},
		{"fcm-macos-arm64.tar.gz", Platform{"darwin", "arm64"}},
		{"fcm-macos-x86_64.tar.gz", Platform{"darwin", "amd64"}},
		{"fcm-linux-x86_64.tar.gz", Platform{"linux", "amd64"}},
		{"fcm-linux-aarch64.tar.gz", Platform{"linux", "arm64"}},
		{"fcm-Darwin-ARM64.tar.gz", Platform{"darwin", "arm64"}},
		{"FCM-MACOS-AARCH64.TAR.GZ", Platform{"darwin", "arm64"}},
		{"fcm-Linux-x86_64.tar.gz", Platform{"linux", "amd64"}},

		{"fcm-windows-amd64.tar.gz", Platform{}},
		{"fcm-linux-386.tar.gz", Platform{}},
		{"fcm-linux-amd64.zip", Platform{}},
		{"fcm-linux-amd64", Platform{}},
		{"fcm-linux.tar.gz", Platform{}},
		{"fcm-linux-amd64-extra.tar.gz", Platform{}},
		{"linux-amd64.tar.gz", Platform{}},
		{"fcm--amd64.tar.gz", Platform{}},
		{"../fcm.db", Platform{}},
		{"fcm-linux-amd64.tar.gz/..", Platform{}},
		{"", Platform{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarball(tc.name)
			if tc.want == (Platform{}) {
				if err == nil {
					t.Fatalf("ParseTarball(%q) = %v, want an error", tc.name, got)
				}
				if !strings.Contains(err.Error(), "fcm-<os>-<arch>.tar.gz") || !strings.Contains(err.Error(), "macos") {
					t.Errorf("error %q does not name the valid forms", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTarball(%q) = %v, %v; want %v", tc.name, got, err, tc.want)
			}
			// What the daemon serves for it is the canonical name.
			if _, err := ParseTarball(got.Tarball()); err != nil {
				t.Errorf("canonical name %s refused: %v", got.Tarball(), err)
			}
		})
	}
}

func TestPlatforms_Tarball(t *testing.T) {
	var names []string
	for _, p := range Platforms {
		names = append(names, p.Tarball())
	}
	want := "fcm-linux-amd64.tar.gz fcm-linux-arm64.tar.gz fcm-darwin-amd64.tar.gz fcm-darwin-arm64.tar.gz"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("tarballs %s, want %s", got, want)
	}
}

func TestInstallCommand(t *testing.T) {
	for base, want := range map[string]string{
		"https://fcm.example.com":  "curl -sL https://fcm.example.com/install.sh | sh",
		"https://fcm.example.com/": "curl -sL https://fcm.example.com/install.sh | sh",
		"http://127.0.0.1:7777":    "curl -sL http://127.0.0.1:7777/install.sh | sh",
	} {
		if got := InstallCommand(base); got != want {
			t.Errorf("InstallCommand(%q) = %q, want %q", base, got, want)
		}
	}
}

func TestInstallScript_BaseURL(t *testing.T) {
	for _, ok := range []string{"https://fcm.example.com", "http://127.0.0.1:7777/", "http://[::1]:7777"} {
		script, err := InstallScript(ok)
		if err != nil {
			t.Errorf("InstallScript(%q): %v", ok, err)
			continue
		}
		if want := "url='" + strings.TrimRight(ok, "/") + "'"; !strings.Contains(string(script), want) {
			t.Errorf("InstallScript(%q) does not set %s", ok, want)
		}
	}
	for _, bad := range []string{
		"", "fcm.example.com", "ftp://fcm.example.com", "https://fcm.example.com/x",
		"https://a'b.example.com", "https://$(reboot).example.com", "https://user@fcm.example.com",
		"https://fcm.example.com?x=1", "https://fcm.example.com;reboot",
	} {
		if _, err := InstallScript(bad); err == nil {
			t.Errorf("InstallScript(%q) accepted it", bad)
		}
	}
}
