package guestinit

import (
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/fcmhost/fcm/internal/vmconf"
)

// drives are the VM's disks fcm-init recognizes by their first page: the
// config drive and the swap drive (the initrd found the base and the data disk
// by their labels). Disks are never told apart by /dev/vdX order, which
// differs between hypervisors.
type drives struct {
	config *vmconf.Config
	swap   string // device path, "" when there is none
}

// findDrives reads the first page of every virtio disk.
func findDrives() drives {
	var d drives
	names, _ := filepath.Glob("/sys/block/vd*")
	for _, sys := range names {
		dev := "/dev/" + filepath.Base(sys)
		page, err := firstPage(dev)
		if err != nil {
			log.Printf("%s: %v", dev, err)
			continue
		}
		switch {
		case strings.HasPrefix(string(page), vmconf.Magic[:len(vmconf.Magic)-1]):
			c, err := vmconf.Decode(page)
			if err != nil {
				log.Printf("%s: %v", dev, err)
				continue
			}
			d.config = c
		case vmconf.IsSwap(page):
			d.swap = dev
		}
	}
	return d
}

func firstPage(dev string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, vmconf.DriveSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}

// applyConfig puts the VM's identity where sshd looks for it, on /run (tmpfs):
// the host key, and root's authorized keys (sshd_config's AuthorizedKeysFile
// names both ~/.ssh/authorized_keys and this file, so root's own list still
// works).
func applyConfig(c *vmconf.Config) {
	os.MkdirAll(vmconf.AuthorizedKeysDir, 0o755)
	writeFile(vmconf.HostKeyPath, c.HostKey, 0o600)
	writeFile(filepath.Join(vmconf.AuthorizedKeysDir, "root"), strings.Join(c.RootKeys, "\n")+"\n", 0o644)
}
