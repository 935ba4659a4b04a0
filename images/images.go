// Package images holds the recipe of fcm's guest image: the Debian release and
// package lists of each variant, the npm packages installed on top, the initrd's
// init script and the kernel modules it loads. The builder in internal/image hashes
// these, so changing any of them rebuilds the image.
package images

import (
	_ "embed"
	"fmt"
	"slices"
	"sort"
)

// InitrdInit is the initrd's /init: it loads the kernel modules and switch_roots.
//
//go:embed initrd-init.sh
var InitrdInit []byte

// KernelSuite is the Debian release the kernel and the initrd's busybox come from,
// whatever release a variant's rootfs is: bookworm's kernel is the one Firecracker
// and QEMU's microvm are known to boot, and a kernel does not care about userland.
const KernelSuite = "bookworm"

// KernelPackage is the Debian metapackage whose kernel the guest boots: the cloud
// flavour, small and with virtio drivers as modules.
const KernelPackage = "linux-image-cloud-amd64"

// Modules are the kernel modules the initrd loads, besides their dependencies:
// virtio-mmio devices (found through ACPI), the disks, overlayfs (each VM's root
// is its own disk over the shared base), the network card, an
// entropy source, the ACPI power button with the event device that reports it,
// and what a guest needs to give each release its own network namespace behind
// NAT: veth pairs and nftables with NAT chains, dnat/snat and masquerade (the
// rootfs has no /lib/modules, so nothing can be loaded later).
var Modules = []string{
	"virtio_mmio", "virtio_blk", "overlay", "virtio_net", "virtio-rng", "button", "evdev",
	"veth", "nf_tables", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_nat", "nft_masq",
}

// AppUser is the unprivileged account every variant has: apps are built and run
// as this user, never as root.
var AppUser = User{Name: "app", UID: 1000, GID: 1000, Home: "/home/app", Shell: "/bin/bash"}

// User is an account the builder makes in the rootfs, with a group of the same name.
type User struct {
	Name        string
	UID, GID    int
	Home, Shell string
}

// base is what every variant installs: an SSH server, the console's tmux, Python,
// and the tools a person expects in a shell.
var base = []string{
	"openssh-server", "tmux", "python3", "iproute2", "procps", "less", "vim-tiny",
	"ca-certificates", "iputils-ping",
}

// Variant is one flavour of the rootfs.
type Variant struct {
	// Suite is the Debian release debootstrap makes the rootfs from.
	Suite string
	// Script is the debootstrap script to use for Suite, for releases newer than the
	// host's debootstrap knows (bookworm's has none for forky; sid's fits every
	// release since bookworm). Empty: debootstrap picks the script named Suite.
	Script string
	// Include goes to debootstrap's --include (its resolver copes with small sets).
	Include []string
	// Extra is installed afterwards with apt-get in the new root, whose resolver
	// handles large dependency trees (npm's) and alternatives that debootstrap's
	// does not.
	Extra []string
	// NPM is installed globally with the rootfs's own npm after Extra, as
	// name@version: pinned, so a new release changes the recipe and nothing is
	// fetched at run time.
	NPM []string
}

// Variants maps a variant name to its recipe, installed on top of debootstrap's
// minbase. minimal is for tests; full is what apps are built and run with.
//
// full follows Debian testing (forky) for current runtimes: Python 3.14 with 3.13
// beside it, Node.js 24, Ruby 3.3 (Ruby 3.4 and 4.0 are not packaged in Debian
// yet). Its sshd and tmux would pull in all of systemd through their first
// alternative, which fcm's own init makes useless; the standalone sysusers and
// tmpfiles satisfy them instead. Its openssh-server no longer depends on the ssh
// client, which bookworm's brought along: it is named.
var Variants = map[string]Variant{
	"minimal": {Suite: "bookworm", Include: base},
	"full": {Suite: "forky", Script: "sid", Include: []string{"ca-certificates"},
		Extra: append(append([]string{"systemd-standalone-sysusers", "systemd-standalone-tmpfiles", "openssh-client"}, base...),
			"python3-pip", "python3-venv", "python3.13", "python3.13-venv",
			"ruby", "ruby-bundler", "ruby-dev", "nodejs", "npm",
			"git", "curl", "build-essential"),
		NPM: []string{"bun@1.4.5", "@anthropic-ai/claude-code@2.1.332"},
	},
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

// Packages returns the sorted list of every Debian package a variant names.
func Packages(variant string) ([]string, error) {
	v, err := Lookup(variant)
	if err != nil {
		return nil, err
	}
	out := append(append([]string(nil), v.Include...), v.Extra...)
	sort.Strings(out)
	return slices.Compact(out), nil
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
