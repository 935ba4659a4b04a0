// Package images holds the recipe of fcm's guest image: the package lists of each
// variant, the initrd's init script and the kernel modules it loads. The builder in
// internal/image hashes these, so changing any of them rebuilds the image.
package images

import (
	_ "embed"
	"fmt"
	"sort"
)

// InitrdInit is the initrd's /init: it loads the virtio modules and switch_roots.
//
//go:embed initrd-init.sh
var InitrdInit []byte

// Suite is the Debian release the rootfs is bootstrapped from.
const Suite = "bookworm"

// KernelPackage is the Debian metapackage whose kernel the guest boots: the cloud
// flavour, small and with virtio drivers as modules.
const KernelPackage = "linux-image-cloud-amd64"

// Modules are the kernel modules the initrd loads, besides their dependencies:
// virtio-mmio devices (found through ACPI), the root disk, the network card, an
// entropy source, and the ACPI power button with the event device that reports it.
var Modules = []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio-rng", "button", "evdev"}

// base is what every variant installs: an SSH server, the console's tmux, Python,
// and the tools a person expects in a shell.
var base = []string{
	"openssh-server", "tmux", "python3", "iproute2", "procps", "less", "vim-tiny",
	"ca-certificates", "iputils-ping",
}

// Variants maps a variant name to the packages installed on top of debootstrap's
// minbase. minimal is for tests; full is what apps are built and run with.
var Variants = map[string][]string{
	"minimal": base,
	"full": append(append([]string(nil), base...),
		"python3-pip", "python3-venv", "ruby", "ruby-bundler", "nodejs", "npm",
		"git", "curl", "build-essential"),
}

// DefaultVariant is the variant `fcm image build` makes when none is named.
const DefaultVariant = "full"

// Packages returns the sorted package list of a variant, or an error naming the
// variants that exist.
func Packages(variant string) ([]string, error) {
	pkgs, ok := Variants[variant]
	if !ok {
		return nil, fmt.Errorf("unknown image variant %q (want %s)", variant, VariantNames())
	}
	out := append([]string(nil), pkgs...)
	sort.Strings(out)
	return out, nil
}

// VariantNames lists the variants as "a|b" for messages and help.
func VariantNames() string {
	names := make([]string, 0, len(Variants))
	for n := range Variants {
		names = append(names, n)
	}
	sort.Strings(names)
	s := ""
	for i, n := range names {
		if i > 0 {
			s += "|"
		}
		s += n
	}
	return s
}
