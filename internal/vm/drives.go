package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmconf"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/crypto/ssh"
)

// LayoutOverlay is the layout of every VM made now: the base's root
// filesystem read-only, the VM's own disk over it (an overlay the initrd
// assembles), a swap drive and a config drive.
const LayoutOverlay = "overlay"

// The files of a VM's drives in its directory. Everything a VM owns lives
// there, so removing the directory (destroy, or undoing a create) leaves
// nothing behind.
const (
	dataFile   = "data.img"   // its own ext4 disk: upper/ and work/ of the root overlay
	swapFile   = "swap.img"   // sparse swap area
	configFile = "config.img" // host key and root's keys, read-only to the guest
	legacyFile = "rootfs.img" // the one disk of a VM made before bases were shared
)

// drives lists a VM's disks for the hypervisor, the base's root filesystem
// first (the root device).
func (m *Manager) drives(vm *store.VM, b *base.Base) []vmm.Drive {
	if vm.Layout != LayoutOverlay {
		return []vmm.Drive{{ID: "rootfs", Path: filepath.Join(m.dir(vm.ID), legacyFile)}}
	}
	return Drives(m.dir(vm.ID), b, vm.SwapMiB > 0)
}

// Drives lists the disks of a VM whose own disks are in dir (made by
// MakeDisks) over base b: the base read-only and shared, then the VM's data,
// swap (if any) and config drives.
func Drives(dir string, b *base.Base, swap bool) []vmm.Drive {
	d := []vmm.Drive{
		{ID: "base", Path: b.Rootfs(), ReadOnly: true, Shared: true},
		{ID: "data", Path: filepath.Join(dir, dataFile)},
	}
	if swap {
		d = append(d, vmm.Drive{ID: "swap", Path: filepath.Join(dir, swapFile)})
	}
	return append(d, vmm.Drive{ID: "config", Path: filepath.Join(dir, configFile), ReadOnly: true})
}

func (m *Manager) makeDrives(ctx context.Context, vm *store.VM, ident *guest.Identity) (string, error) {
	return MakeDisks(ctx, m.dir(vm.ID), m.cfg.Templates, vm.DiskBytes, vm.SwapMiB, ident)
}

// MakeDisks makes a new VM's own disks in dir and says how, in one line: its
// data disk (diskBytes free), a clone of the empty template of its size; the
// swap drive (swapMiB, none if 0); the config drive with ident. None depends
// on the base's size, and none is written into by the host afterwards.
func MakeDisks(ctx context.Context, dir string, tpls *disk.Templates, diskBytes int64, swapMiB int, ident *guest.Identity) (string, error) {
	t := time.Now()
	tpl, err := tpls.Get(ctx, diskBytes)
	if err != nil {
		return "", fmt.Errorf("disk template: %w", err)
	}
	method, err := disk.Clone(ctx, tpl, filepath.Join(dir, dataFile))
	if err != nil {
		return "", err
	}
	if swapMiB > 0 {
		if err := vmconf.WriteSwapDrive(filepath.Join(dir, swapFile), int64(swapMiB)<<20); err != nil {
			return "", err
		}
	}
	conf := &vmconf.Config{HostKey: string(ident.HostKeyPEM), RootKeys: []string{string(ssh.MarshalAuthorizedKey(ident.AuthorizedKey))}}
	if err := vmconf.WriteDrive(filepath.Join(dir, configFile), conf); err != nil {
		return "", err
	}
	var used int64
	for _, f := range []string{dataFile, swapFile, configFile} {
		if n, err := disk.Allocated(filepath.Join(dir, f)); err == nil {
			used += n
		}
	}
	return fmt.Sprintf("%s disk (%s clone), %d MiB swap, keys: %s of host disk in %s",
		humanBytes(diskBytes), method, swapMiB, humanBytes(used), time.Since(t).Round(time.Millisecond)), nil
}
