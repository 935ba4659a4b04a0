package vmconf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
)

func TestConfigDriveRoundTrip(t *testing.T) {
	c := &Config{HostKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n", RootKeys: []string{"ssh-ed25519 AAAA daemon"}}
	path := filepath.Join(t.TempDir(), "config.img")
	if err := WriteDrive(path, c); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != DriveSize {
		t.Fatalf("config drive is %d bytes, want %d", len(b), DriveSize)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("decoded %+v, want %+v", got, c)
	}
	if err := WriteDrive(path, c); !errors.Is(err, os.ErrExist) {
		t.Errorf("writing over an existing drive: %v, want it refused", err)
	}
}

func TestDecodeRefusesOtherDisks(t *testing.T) {
	for name, b := range map[string][]byte{
		"zeros":      make([]byte, DriveSize),
		"swap":       SwapHeader(1 << 20),
		"newer":      append([]byte("FCMCONF2"), make([]byte, 100)...),
		"too long":   append([]byte(Magic+"\xff\xff\x00\x00"), make([]byte, 100)...),
		"bad json":   append([]byte(Magic+"\x02\x00\x00\x00{x"), make([]byte, 100)...),
		"truncated":  []byte(Magic),
		"empty file": nil,
	} {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func TestSwapDrive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "swap.img")
	if err := WriteSwapDrive(path, 512<<20); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 512<<20 {
		t.Errorf("size %d, want 512 MiB", st.Size())
	}
	if alloc := st.Sys().(*syscall.Stat_t).Blocks * 512; alloc > 64<<10 {
		t.Errorf("a new swap drive takes %d bytes of host disk, want it sparse", alloc)
	}
	b, _ := os.ReadFile(path)
	if !IsSwap(b[:SwapPage]) {
		t.Error("no swap signature in the first page")
	}
	if IsSwap(make([]byte, SwapPage)) {
		t.Error("zeros taken for swap")
	}
	if err := WriteSwapDrive(filepath.Join(t.TempDir(), "odd"), 12345); err == nil {
		t.Error("a swap drive of 12345 bytes was made")
	}
}
