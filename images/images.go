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

// Variant is one flavour of the rootfs.
type Variant struct {
	// Include goes to debootstrap's --include (its resolver copes with small sets).
	Include []string
	// Extra is installed afterwards with apt-get in the new root, whose resolver
	// handles large dependency trees (npm's) that debootstrap's does not.
	Extra []string
}

// Variants maps a variant name to its packages, installed on top of debootstrap's
// minbase. minimal is for tests; full is what apps are built and run with.
var Variants = map[string]Variant{
	"minimal": {Include: base},
	"full": {Include: base, Extra: []string{
		"python3-pip", "python3-venv", "ruby", "ruby-bundler", "nodejs", "npm",
		"git", "curl", "build-essential",
	}},
}

// DefaultVariant is the variant `fcm image build` makes when none is named.
const DefaultVariant = "full"

// Lookup returns a variant, or an error naming the variants that exist.
func Lookup(name string) (Variant, error) {
	v, ok := Variants[name]
	if !ok {
		return Variant{}, fmt.Errorf("unknown image variant %q (want %s)", name, VariantNames())
	}
	return v, nil
}

// Packages returns the sorted list of every package a variant names.
func Packages(variant string) ([]string, error) {
	v, err := Lookup(variant)
	if err != nil {
		return nil, err
	}
	out := append(append([]string(nil), v.Include...), v.Extra...)
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
