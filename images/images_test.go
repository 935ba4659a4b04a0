package images

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestVariants_Recipe(t *testing.T) {
	if v := Variants["minimal"]; v.Suite != "bookworm" || len(v.NPM) != 0 {
		t.Errorf("minimal = %+v: the tests' image stays bookworm without npm packages", v)
	}
	full := Variants["full"]
	if full.Suite != "forky" || full.Script == "" {
		t.Errorf("full: suite %q script %q, want forky through an explicit script", full.Suite, full.Script)
	}
	pkgs, err := Packages("full")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"python3", "python3.13", "python3-venv", "python3.13-venv", "python3-pip",
		"nodejs", "npm", "ruby", "ruby-bundler", "ruby-dev", "git", "curl", "build-essential", "openssh-server", "tmux"} {
		if !slices.Contains(pkgs, p) {
			t.Errorf("full lacks %s", p)
		}
	}
	pinned := regexp.MustCompile(`^(@[a-z0-9-]+/)?[a-z0-9.-]+@\d+\.\d+\.\d+$`)
	for _, p := range full.NPM {
		if !pinned.MatchString(p) {
			t.Errorf("npm package %q is not pinned as name@x.y.z", p)
		}
	}
}

func TestModules_NetnsAndNAT(t *testing.T) {
	for _, m := range []string{"virtio_blk", "virtio_net", "veth", "nf_tables", "nft_chain_nat", "nft_masq", "nf_nat", "nf_conntrack"} {
		if !slices.Contains(Modules, m) {
			t.Errorf("initrd does not load %s", m)
		}
	}
}

func TestLookup_Unknown(t *testing.T) {
	if _, err := Lookup("huge"); err == nil || !strings.Contains(err.Error(), "full|minimal") {
		t.Errorf("err = %v", err)
	}
}
