//go:build linux

package cli

import (
	"fmt"
	"strings"

	"github.com/fcmhost/fcm/images"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/spf13/cobra"
)

// imageHostCommands are fcm image's commands that run on the host itself.
func imageHostCommands() []*cobra.Command { return []*cobra.Command{newImageBuildCmd()} }

func newImageBuildCmd() *cobra.Command {
	var opts image.Options
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest image (kernel, initrd, ext4 rootfs) with debootstrap",
		Long: `Build the guest image every VM boots from, without Docker:

  vmlinux.bin      Debian ` + images.KernelSuite + `'s cloud kernel, extracted as the ELF Firecracker loads
  initrd.img       busybox, the kernel's virtio modules, veth and nftables NAT
  base-rootfs.img  Debian from debootstrap, as a sparse ext4 image, with this fcm
                   binary as its /sbin/init and a user 'app' (uid 1000)

Variants: 'minimal' (Debian ` + images.Variants["minimal"].Suite + `: openssh-server, tmux, python3, iproute2;
fast, for tests) and 'full' (Debian ` + images.Variants["full"].Suite + `, testing: Python 3.14 and 3.13
with pip and venv, Node.js 24 and npm, Ruby 3.3 and Bundler, git, curl,
build-essential, and from npm ` + strings.Join(images.Variants["full"].NPM, ", ") + `:
what apps are built with).

Slow stages (the kernel download, debootstrap) are cached in --cache-dir by a hash
of their recipe; building again with nothing changed takes seconds. Needs root.
At the end it prints what went in (versions and sizes, measured in the image);
image.json keeps the same list.`,
		Example: `  sudo fcm image build
  sudo fcm image build --variant minimal --out /tmp/fcm-image`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := images.Packages(opts.Variant); err != nil {
				return usageError{cmd: "image build", err: err}
			}
			opts.Progress = cmd.OutOrStdout()
			m, err := image.Build(cmd.Context(), opts)
			if err != nil {
				return fmt.Errorf("image build: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Image %s (%s, %s) in %s\n", m.Recipe[:12], m.Variant, m.Kernel, opts.OutDir)
			if len(m.Components) > 0 {
				fmt.Fprintln(out)
				return image.WriteTable(out, m.Components)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Variant, "variant", images.DefaultVariant, "image variant: "+images.VariantNames())
	f.StringVar(&opts.OutDir, "out", image.DefaultOutDir, "directory for vmlinux.bin, initrd.img and base-rootfs.img")
	f.StringVar(&opts.CacheDir, "cache-dir", image.DefaultCacheDir, "directory for cached build stages")
	f.StringVar(&opts.Mirror, "mirror", image.DefaultMirror, "Debian mirror")
	f.BoolVar(&opts.Force, "force", false, "rebuild every stage, ignoring the cache")
	return cmd
}
