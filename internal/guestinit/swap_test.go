package guestinit

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSwapMiB(t *testing.T) {
	for cmdline, want := range map[string]int{
		"quiet fcm.swap=512 ip=x": 512, "fcm.swap=0": 0, "fcm.swap=-3": 0, "fcm.swap=lots": 0, "quiet": 0,
	} {
		if got := swapMiB(cmdline); got != want {
			t.Errorf("swapMiB(%q) = %d, want %d", cmdline, got, want)
		}
	}
}

// TestMakeSwapFile checks the header against util-linux's own reader (swaplabel).
func TestMakeSwapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "swapfile")
	if err := makeSwapFile(path, 8); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != 8<<20 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("swap file %v mode %v: %v", fi.Size(), fi.Mode().Perm(), err)
	}
	h := make([]byte, 4096)
	f, _ := os.Open(path)
	f.Read(h)
	f.Close()
	if string(h[4086:]) != "SWAPSPACE2" || binary.LittleEndian.Uint32(h[1028:]) != 2047 {
		t.Errorf("header: magic %q last_page %d", h[4086:], binary.LittleEndian.Uint32(h[1028:]))
	}
	out, err := exec.Command("swaplabel", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "UUID:") {
		t.Errorf("swaplabel: %v: %s", err, out)
	}
	if err := makeSwapFile(path, 8); err == nil {
		t.Error("making a swap file over an existing one did not fail")
	}
}
