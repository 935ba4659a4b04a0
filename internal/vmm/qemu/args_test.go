package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm"
)

func testSpec() vmm.Spec {
	return vmm.Spec{
		ID: "abc123", Dir: "/var/lib/firecracker/abc123",
		Kernel: "/img/vmlinux.bin", Initrd: "/img/initrd.img",
		BootArgs:  "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
		Drives:    []vmm.Drive{{ID: "rootfs", Path: "/var/lib/firecracker/abc123/rootfs.img"}},
		TapDevice: "tap_abc123", MAC: "06:00:ac:10:00:32",
		VCPUs: 2, MemoryMiB: 1024,
	}
}

// value returns the argument after flag, or "" when flag is absent.
func value(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func allValues(args []string, flag string) []string {
	var out []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name  string
		spec  func() vmm.Spec
		accel Accel
		check func(t *testing.T, a []string)
	}{
		{"tcg adds the TSC rate and a bounded translation cache", testSpec, TCG, func(t *testing.T, a []string) {
			if got := value(a, "-accel"); got != "tcg,tb-size=64" {
				t.Errorf("-accel %q", got)
			}
			if got := value(a, "-cpu"); got != "max" {
				t.Errorf("-cpu %q", got)
			}
			if got := value(a, "-append"); got != "console=ttyS0 reboot=k panic=1 root=/dev/vda rw tsc_early_khz=2445430" {
				t.Errorf("-append %q", got)
			}
		}},
		{"kvm uses the host CPU and leaves the command line alone", testSpec, KVM, func(t *testing.T, a []string) {
			if got := value(a, "-accel"); got != "kvm" {
				t.Errorf("-accel %q", got)
			}
			if got := value(a, "-cpu"); got != "host" {
				t.Errorf("-cpu %q", got)
			}
			if got := value(a, "-append"); strings.Contains(got, "tsc_early_khz") {
				t.Errorf("-append %q has tsc_early_khz under KVM", got)
			}
		}},
		{"machine, size, kernel, initrd, reboot ends qemu", testSpec, TCG, func(t *testing.T, a []string) {
			want := map[string]string{
				"-machine": "microvm,acpi=on,pit=on,pic=on,rtc=on", "-m": "1024", "-smp": "2",
				"-kernel": "/img/vmlinux.bin", "-initrd": "/img/initrd.img",
				"-pidfile": "/var/lib/firecracker/abc123/qemu.pid",
				"-qmp":     "unix:/var/lib/firecracker/abc123/qmp.sock,server=on,wait=off",
				"-name":    "fcm-abc123",
				"-sandbox": "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
			}
			for flag, v := range want {
				if got := value(a, flag); got != v {
					t.Errorf("%s = %q, want %q", flag, got, v)
				}
			}
			for _, flag := range []string{"-no-reboot", "-nodefaults"} {
				if !slices.Contains(a, flag) {
					t.Errorf("missing %s", flag)
				}
			}
			// -daemonize forks and calls setsid, which the sandbox forbids.
			if slices.Contains(a, "-daemonize") {
				t.Errorf("-daemonize with -sandbox spawn=deny: QEMU would be killed by SIGSYS")
			}
		}},
		{"disk, tap with the VM's MAC, rng, i8042", testSpec, TCG, func(t *testing.T, a []string) {
			if got := value(a, "-drive"); got != "id=rootfs,file=/var/lib/firecracker/abc123/rootfs.img,format=raw,if=none,discard=unmap" {
				t.Errorf("-drive %q", got)
			}
			if got := value(a, "-netdev"); got != "tap,id=net0,ifname=tap_abc123,script=no,downscript=no" {
				t.Errorf("-netdev %q", got)
			}
			devices := allValues(a, "-device")
			for _, d := range []string{"virtio-blk-device,drive=rootfs", "virtio-net-device,netdev=net0,mac=06:00:ac:10:00:32", "virtio-rng-device", "i8042"} {
				if !slices.Contains(devices, d) {
					t.Errorf("devices %q lack %q", devices, d)
				}
			}
		}},
		{"a shared base read-only, then the vm's own drives", func() vmm.Spec {
			s := testSpec()
			s.Drives = []vmm.Drive{{ID: "base", Path: "/img/base.img", ReadOnly: true, Shared: true}, {ID: "data", Path: "/vm/data.img"}}
			return s
		}, TCG, func(t *testing.T, a []string) {
			want := []string{"id=base,file=/img/base.img,format=raw,if=none,readonly=on", "id=data,file=/vm/data.img,format=raw,if=none,discard=unmap"}
			if got := allValues(a, "-drive"); !slices.Equal(got, want) {
				t.Errorf("-drive %q, want %q", got, want)
			}
			devices := allValues(a, "-device")
			if !slices.Contains(devices, "virtio-blk-device,drive=base") || !slices.Contains(devices, "virtio-blk-device,drive=data") {
				t.Errorf("devices %q lack a virtio-blk device per drive", devices)
			}
		}},
		{"no tap, no network device", func() vmm.Spec { s := testSpec(); s.TapDevice = ""; return s }, TCG, func(t *testing.T, a []string) {
			if slices.Contains(a, "-netdev") {
				t.Errorf("-netdev present without a tap: %q", a)
			}
		}},
		{"no initrd", func() vmm.Spec { s := testSpec(); s.Initrd = ""; return s }, TCG, func(t *testing.T, a []string) {
			if slices.Contains(a, "-initrd") {
				t.Error("-initrd present without an initrd")
			}
		}},
		{"commas in paths are escaped", func() vmm.Spec { s := testSpec(); s.Drives[0].Path = "/x,y/disk.img"; s.Dir = "/a,b"; return s }, TCG, func(t *testing.T, a []string) {
			if got := value(a, "-drive"); !strings.Contains(got, "file=/x,,y/disk.img,") {
				t.Errorf("-drive %q", got)
			}
			if got := value(a, "-chardev"); got != "file,id=console,path=/a,,b/console.log,append=on" {
				t.Errorf("-chardev %q", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, args(tt.spec(), tt.accel, 2445430))
		})
	}
}

func TestRegistry(t *testing.T) {
	d, err := vmm.Open("qemu")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "qemu" {
		t.Fatalf("Name() = %q", d.Name())
	}
	if a := d.(*Driver).Accel(); a != KVM && a != TCG {
		t.Fatalf("Accel() = %q", a)
	}
}
