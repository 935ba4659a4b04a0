package main

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// defaultBootArgs is Firecracker's kernel command line when boot_args is absent
// (v1.17: src/vmm/src/vmm_config/boot_source.rs, DEFAULT_KERNEL_CMDLINE; pci=off
// is no longer in it but inserted at boot, see kernelCmdline).
const defaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path"`
	BootArgs        *string `json:"boot_args"`
}

type netIface struct {
	IfaceID     string  `json:"iface_id"`
	HostDevName string  `json:"host_dev_name"`
	GuestMAC    *string `json:"guest_mac"`
}

type machineConfig struct {
	VCPUCount       int     `json:"vcpu_count"`
	MemSizeMiB      int     `json:"mem_size_mib"`
	SMT             bool    `json:"smt"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool    `json:"track_dirty_pages"`
	HugePages       string  `json:"huge_pages"`
}

// defaultMachine is Firecracker's machine before PUT /machine-config.
func defaultMachine() machineConfig {
	return machineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: "None"}
}

func (a *api) getInstance(map[string]string, []byte) (any, error) {
	state := "Not started"
	switch {
	case a.started && a.paused:
		state = "Paused"
	case a.started:
		state = "Running"
	}
	id := a.id
	if id == "" {
		id = "anonymous-instance"
	}
	return map[string]string{"id": id, "state": state, "vmm_version": a.spec.Info.Version, "app_name": "Firecracker"}, nil
}

func (a *api) getVersion(map[string]string, []byte) (any, error) {
	return map[string]string{"firecracker_version": a.spec.Info.Version}, nil
}

func (a *api) getMachineConfig(map[string]string, []byte) (any, error) {
	return a.machine, nil
}

// openable checks that path is a file this process can open for reading, and
// with write for writing too, as Firecracker opens it (as the same user) at PUT.
func openable(path string, write bool) error {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	return nil
}

func (a *api) putBootSource(_ map[string]string, body []byte) (any, error) {
	var b bootSource
	if err := decode(body, &b); err != nil {
		return nil, err
	}
	if err := openable(b.KernelImagePath, false); err != nil {
		return nil, fmt.Errorf("The kernel file cannot be opened: %v", err)
	}
	if b.InitrdPath != nil {
		if err := openable(*b.InitrdPath, false); err != nil {
			return nil, fmt.Errorf("The initrd file cannot be opened: %v", err)
		}
	}
	a.boot = &b
	return nil, nil
}

// bootArgs is the kernel command line: boot_args when given, else the default.
func (b *bootSource) bootArgs() string {
	if b.BootArgs != nil {
		return *b.BootArgs
	}
	return defaultBootArgs
}

func (a *api) putMachineConfig(_ map[string]string, body []byte) (any, error) {
	m := defaultMachine() // omitted optional fields take their defaults
	if err := decode(body, &m); err != nil {
		return nil, err
	}
	if m.VCPUCount < 1 || m.VCPUCount > 32 || (m.SMT && m.VCPUCount > 1 && m.VCPUCount%2 != 0) {
		return nil, errors.New("The vCPU number is invalid: it can either be 1 or an even number when SMT is enabled.")
	}
	if m.MemSizeMiB < 1 || (m.HugePages == "2M" && m.MemSizeMiB%2 != 0) {
		return nil, errors.New("The memory size (MiB) is invalid.")
	}
	a.machine = m
	return nil, nil
}

func (a *api) putNetworkInterface(_ map[string]string, body []byte) (any, error) {
	var n netIface
	if err := decode(body, &n); err != nil {
		return nil, err
	}
	if _, err := net.InterfaceByName(n.HostDevName); err != nil {
		return nil, fmt.Errorf("Open tap device failed: %s: %v", n.HostDevName, err)
	}
	if n.GuestMAC != nil {
		if mac, err := net.ParseMAC(*n.GuestMAC); err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("Invalid guest MAC address %q: want six hex bytes like 06:00:ac:10:00:02", *n.GuestMAC)
		}
	}
	for _, o := range a.ifaces {
		if o.IfaceID != n.IfaceID && o.HostDevName == n.HostDevName {
			return nil, fmt.Errorf("The host device name %s is already in use by interface %s", n.HostDevName, o.IfaceID)
		}
	}
	for i, o := range a.ifaces {
		if o.IfaceID == n.IfaceID {
			a.ifaces[i] = &n
			return nil, nil
		}
	}
	a.ifaces = append(a.ifaces, &n)
	return nil, nil
}

func (a *api) putAction(_ map[string]string, body []byte) (any, error) {
	var act struct {
		ActionType string `json:"action_type"`
	}
	if err := decode(body, &act); err != nil {
		return nil, err
	}
	switch act.ActionType {
	case "FlushMetrics":
		return nil, nil
	case "SendCtrlAltDel":
		if !a.started {
			return nil, errors.New(msgBeforeStart)
		}
		return nil, a.vm.ctrlAltDel()
	case "InstanceStart":
		if a.started {
			return nil, errors.New(msgAfterStart)
		}
		return nil, a.start()
	}
	return nil, fmt.Errorf("action %s is not implemented by the fcm stand-in", act.ActionType)
}
