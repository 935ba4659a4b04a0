package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fcmhost/fcm/internal/vmm"
)

// Firecracker v1.17 keeps its drives in one list, the root device first (the
// guest's /dev/vda), the others in the order they were configured:
// src/vmm/src/vmm_config/drive.rs, BlockBuilder::insert. A new drive is pushed
// to the back, a new root device to the front; a PUT on an existing drive_id
// replaces it in place, and when that turns a drive at index i > 0 into the
// root device, the drives at 0 and i swap places. A second root device is
// refused. At boot the drives are attached in that order
// (src/vmm/src/builder.rs, attach_block_devices).

// maxVirtioDevices is how many virtio devices Firecracker on x86_64 attaches:
// one legacy IRQ each from 5-23 (src/vmm/src/arch/x86_64/layout.rs,
// GSI_LEGACY_START/END), less the two that VMGenID and VMClock always take
// (tests/integration_tests/functional/test_max_devices.py). More fail
// InstanceStart. There is no other limit on the number of drives.
const maxVirtioDevices = 17

type drive struct {
	DriveID      string  `json:"drive_id"`
	PathOnHost   *string `json:"path_on_host"`
	IsRootDevice bool    `json:"is_root_device"`
	IsReadOnly   *bool   `json:"is_read_only"`
	Partuuid     *string `json:"partuuid"`
	Socket       *string `json:"socket"`
}

// readOnly is is_read_only, which Firecracker takes as false when omitted.
func (d *drive) readOnly() bool { return d.IsReadOnly != nil && *d.IsReadOnly }

func (a *api) putDrive(_ map[string]string, body []byte) (any, error) {
	var d drive
	if err := decode(body, &d); err != nil {
		return nil, err
	}
	if d.Socket != nil {
		return nil, fmt.Errorf("Drive %s: vhost-user-block (socket) is not implemented by the fcm stand-in", d.DriveID)
	}
	if d.PathOnHost == nil {
		return nil, fmt.Errorf("Drive %s: path_on_host is required for a virtio-block drive", d.DriveID)
	}
	// Firecracker opens the file here, read-write unless is_read_only
	// (src/vmm/src/devices/virtio/block/virtio/device.rs, DiskProperties::open_file):
	// a writable drive on a file its user may only read is refused now.
	if err := openable(*d.PathOnHost, !d.readOnly()); err != nil {
		return nil, fmt.Errorf("Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %v", err)
	}
	return nil, a.insertDrive(&d)
}

// insertDrive adds d to the drives as Firecracker's BlockBuilder::insert does.
func (a *api) insertDrive(d *drive) error {
	pos := -1
	for i, o := range a.drives {
		if o.DriveID == d.DriveID {
			pos = i
			break
		}
	}
	hasRoot := len(a.drives) > 0 && a.drives[0].IsRootDevice
	if d.IsRootDevice && hasRoot && pos != 0 {
		return fmt.Errorf("A root block device already exists! (drive %s)", a.drives[0].DriveID)
	}
	switch {
	case pos < 0 && d.IsRootDevice:
		a.drives = append([]*drive{d}, a.drives...)
	case pos < 0:
		a.drives = append(a.drives, d)
	default:
		a.drives[pos] = d
		if pos != 0 && d.IsRootDevice {
			a.drives[0], a.drives[pos] = a.drives[pos], a.drives[0]
		}
	}
	return nil
}

// specDrives are the drives in Firecracker's order, as the qemu package
// attaches them. Shared stays false: only fcm knows which drive VMs share,
// and its sandbox, not the hypervisor, acts on it.
func (a *api) specDrives() ([]vmm.Drive, error) {
	if n := len(a.drives) + len(a.ifaces); n > maxVirtioDevices {
		return nil, fmt.Errorf("Could not allocate GSI: The requested resource is not available. (%d drives and %d network interfaces: Firecracker on x86_64 attaches at most %d virtio devices)",
			len(a.drives), len(a.ifaces), maxVirtioDevices)
	}
	var drives []vmm.Drive
	for _, d := range a.drives {
		drives = append(drives, vmm.Drive{ID: d.DriveID, Path: *d.PathOnHost, ReadOnly: d.readOnly()})
	}
	return drives, nil
}

// kernelCmdline is the command line Firecracker boots the guest with: boot_args
// (or its default), then what Firecracker inserts at InstanceStart. The
// linux-loader crate's Cmdline (v0.14, src/cmdline/mod.rs) splits boot_args at
// the first " -- " outside double quotes into kernel and init arguments, and
// insert_str appends to the kernel arguments, space-separated, so the init
// arguments stay last. Firecracker inserts:
//   - pci=off, PCI being disabled (src/vmm/src/builder.rs,
//     build_microvm_for_boot: the stand-in has no --enable-pci);
//   - for a root device, root=PARTUUID=<partuuid> when it has one, else
//     root=/dev/vda, then ro or rw by its is_read_only
//     (src/vmm/src/vmm_config/boot_source.rs, append_root_device_cmdline, called
//     by builder.rs attach_block_devices); no root device, no root=.
//
// On x86_64 Firecracker also adds a virtio_mmio.device=4K@<addr>:<irq> per
// device; QEMU's devices are elsewhere (and described by ACPI), so those are
// left out.
func (a *api) kernelCmdline() (string, error) {
	args, init := a.boot.bootArgs(), ""
	if i := initArgsSeparator(args); i >= 0 {
		args, init = args[:i], args[i+len(" -- "):]
	}
	args, init = strings.TrimSpace(args), strings.TrimSpace(init)
	insert := []string{"pci=off"}
	if len(a.drives) > 0 && a.drives[0].IsRootDevice {
		root := a.drives[0]
		if root.Partuuid != nil {
			for _, c := range *root.Partuuid {
				if c < ' ' || c > '~' {
					return "", errors.New("Invalid kernel command line: String contains a non-printable ASCII character.")
				}
			}
			insert = append(insert, "root=PARTUUID="+strings.TrimSpace(*root.Partuuid))
		} else {
			insert = append(insert, "root=/dev/vda")
		}
		if root.readOnly() {
			insert = append(insert, "ro")
		} else {
			insert = append(insert, "rw")
		}
	}
	for _, s := range insert {
		if args != "" {
			args += " "
		}
		args += s
	}
	if init != "" {
		args += " -- " + init
	}
	return args, nil
}

// initArgsSeparator is the index of the first " -- " of s not inside double
// quotes, or -1.
func initArgsSeparator(s string) int {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '"':
			quoted = !quoted
		case !quoted && strings.HasPrefix(s[i:], " -- "):
			return i
		}
	}
	return -1
}
