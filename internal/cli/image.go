package cli

import (
	"fmt"

	"github.com/fcmhost/fcm/images"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/spf13/cobra"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect the guest image",
	}
	cmd.AddCommand(newImageBuildCmd())
	return cmd
}

func newImageBuildCmd() *cobra.Command {
	var opts image.Options
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest image (kernel, initrd, ext4 rootfs) with debootstrap",
		Long: `Build the guest image every VM boots from, without Docker:

  vmlinux.bin      Debian's cloud kernel, extracted as the ELF Firecracker loads
  initrd.img       busybox and the kernel's virtio modules
  base-rootfs.img  Debian ` + images.Suite + ` from debootstrap, as a sparse ext4 image,
                   with this fcm binary as its /sbin/init

Variants: 'minimal' (openssh-server, tmux, python3, iproute2: fast, for tests) and
'full' (also pip and venv, ruby and bundler, nodejs and npm, git, curl,
build-essential: what apps are built with).

Slow stages (the kernel download, debootstrap) are cached in --cache-dir by a hash
of their recipe; building again with nothing changed takes seconds. Needs root.`,
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
			fmt.Fprintf(cmd.OutOrStdout(), "Image %s (%s, %s) in %s\n", m.Recipe[:12], m.Variant, m.Kernel, opts.OutDir)
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
