// Package vmconf is the format of what the host hands each VM besides its kernel
// command line: the config drive (a small read-only disk with the VM's SSH host
// key and the keys allowed to log in as root) and the header of its swap drive.
// The daemon writes both before a VM's first boot; fcm-init, in the guest, finds
// them among the VM's disks by their first bytes and reads them. Nothing per VM
// is written into the shared base image.
package vmconf

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// Magic starts a config drive; its last digit is the format's version, so an
// fcm-init that does not know a newer format ignores the drive instead of
// misreading it.
const Magic = "FCMCONF1"

// DriveSize is the size of a config drive: one page, a whole number of sectors.
const DriveSize = 4096

// Guest paths fcm-init writes the config to (tmpfs: never on the VM's disk).
const (
	RunDir            = "/run/fcm"
	HostKeyPath       = RunDir + "/ssh_host_ed25519_key"
	AuthorizedKeysDir = RunDir + "/authorized_keys" // one file per user, as sshd's %u
)

// Config is what a VM learns from its config drive.
type Config struct {
	// HostKey is the VM's SSH host key (private, OpenSSH PEM); the daemon pins
	// its public half.
	HostKey string `json:"host_key"`
	// RootKeys may log in as root (authorized_keys lines): the daemon's key.
	RootKeys []string `json:"root_keys"`
}

// Encode lays c out as a config drive: Magic, the JSON's length (4 bytes, little
// endian), the JSON, zeros to DriveSize.
func Encode(c *Config) ([]byte, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	if len(Magic)+4+len(data) > DriveSize {
		return nil, fmt.Errorf("vm config is %d bytes, more than a %d-byte config drive holds", len(data), DriveSize)
	}
	b := make([]byte, DriveSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint32(b[len(Magic):], uint32(len(data)))
	copy(b[len(Magic)+4:], data)
	return b, nil
}

// ErrNotConfig says a disk does not start with Magic.
var ErrNotConfig = errors.New("not an fcm config drive")

// Decode reads a config drive's first page.
func Decode(b []byte) (*Config, error) {
	if !bytes.HasPrefix(b, []byte(Magic)) {
		return nil, ErrNotConfig
	}
	if len(b) < len(Magic)+4 {
		return nil, errors.New("config drive: truncated")
	}
	n := int(binary.LittleEndian.Uint32(b[len(Magic):]))
	if n > len(b)-len(Magic)-4 {
		return nil, fmt.Errorf("config drive: length %d beyond its %d bytes", n, len(b))
	}
	var c Config
	if err := json.Unmarshal(b[len(Magic)+4:len(Magic)+4+n], &c); err != nil {
		return nil, fmt.Errorf("config drive: %w", err)
	}
	return &c, nil
}

// WriteDrive makes a new config drive at path (mode 0600; it must not exist).
func WriteDrive(path string, c *Config) error {
	b, err := Encode(c)
	if err != nil {
		return err
	}
	return writeNew(path, b, int64(len(b)))
}

// SwapPage is the page size swap headers are laid out for (x86-64).
const SwapPage = 4096

// swapMagic ends a version-1 swap area's first page.
const swapMagic = "SWAPSPACE2"

// SwapHeader is the first page of a version-1 Linux swap area of size bytes,
// what mkswap writes.
func SwapHeader(size int64) []byte {
	h := make([]byte, SwapPage)
	binary.LittleEndian.PutUint32(h[1024:], 1)                       // version
	binary.LittleEndian.PutUint32(h[1028:], uint32(size/SwapPage-1)) // last_page
	rand.Read(h[1036:1052])                                          // uuid
	copy(h[SwapPage-len(swapMagic):], swapMagic)
	return h
}

// IsSwap reports whether a disk's first page is a swap header.
func IsSwap(page []byte) bool {
	return len(page) >= SwapPage && string(page[SwapPage-len(swapMagic):SwapPage]) == swapMagic
}

// WriteSwapDrive makes a new sparse swap drive of size bytes at path: a header
// and a hole; the host allocates its blocks only as the guest swaps.
func WriteSwapDrive(path string, size int64) error {
	if size < 16*SwapPage || size%SwapPage != 0 {
		return fmt.Errorf("swap drive of %d bytes: want a multiple of %d, at least 16 pages", size, SwapPage)
	}
	return writeNew(path, SwapHeader(size), size)
}

// writeNew creates path exclusively with data at its start and size bytes long.
func writeNew(path string, data []byte, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
