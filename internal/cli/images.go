package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// aboutBases explains bases; the image commands' help shows it.
const aboutBases = `Every VM boots from a base: a guest image (kernel, initrd and a read-only
root filesystem) the daemon stores once, under its content id, in
<data-dir>/images/<id>/. Each VM writes to a disk of its own on top of it.

'sudo fcm image build' on the daemon's host writes a new image. The daemon
takes it as the current base the next time it looks (at a create, an fcm
image ls or prune, its start), and new VMs are made from it. Existing VMs
keep the base they were made from, across stops, starts and daemon
restarts, until they are destroyed and created again.

A base no VM uses any more still takes its disk space until 'fcm image
prune' removes it. Prune never removes the current base, nor one a VM uses,
whatever the VM's state.`

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "The guest images VMs boot from: build, list, prune",
		Long: aboutBases + `

  sudo fcm image build       # on the daemon's host: a new base for new VMs
  fcm image ls               # the bases, their size and their VMs (admin)
  fcm image prune            # remove the bases no VM uses (admin)`,
		Args: noArgs,
	}
	cmd.AddCommand(imageHostCommands()...)
	cmd.AddCommand(newImageLsCmd(), newImagePruneCmd())
	return cmd
}

func newImageLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the bases, their size and the VMs made from each (admin only)",
		Long: "List the bases the daemon stores, newest build first: the first 12 digits\n" +
			"of each id, its variant, when it was built, the disk it takes on the host,\n" +
			"a * on the current one (new VMs are made from it) and the VMs using it.\n\n" + aboutBases,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			imgs, err := client.FromEnv().ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, imgs)
			}
			out := cmd.OutOrStdout()
			if len(imgs) == 0 {
				fmt.Fprintln(out, "No images yet: the daemon stores its first when it starts.")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tVARIANT\tBUILT\tSIZE\tCURRENT\tVMS")
			for _, img := range imgs {
				current := ""
				if img.Current {
					current = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", shortID(img.ID), dash(img.Variant), built(img),
					sizeOf(img.Bytes), current, dash(strings.Join(img.VMs, ",")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newImagePruneCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove the bases no VM uses (admin only)",
		Long: "Remove every base that is neither the current one nor used by a VM, in\n" +
			"any state, and print the disk space that gave back (a base's files are\n" +
			"hard links where they can be: space still linked from elsewhere, such as\n" +
			"the directory a build wrote, is not freed). A create racing the prune either\n" +
			"keeps its base or fails and can be tried again: no VM is left on a\n" +
			"removed base.\n\n" + aboutBases,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := client.FromEnv().PruneImages(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(res.Removed) == 0 {
				fmt.Fprintf(out, "nothing to prune: %s, all in use or current\n", plural(res.Kept, "image"))
				return nil
			}
			var total int64
			for _, img := range res.Removed {
				total += img.Bytes
				fmt.Fprintf(out, "Removed %s (%s, built %s, %s)\n", shortID(img.ID), dash(img.Variant), built(img), sizeOf(img.Bytes))
			}
			fmt.Fprintf(out, "Freed %s; %s kept (in use or current)\n", sizeOf(res.Freed), plural(res.Kept, "image"))
			if res.Freed < total {
				fmt.Fprintf(out, "(%s of the removed files is still linked from elsewhere, such as the directory a build wrote: it is freed when that goes)\n", sizeOf(total-res.Freed))
			}
			return nil
		},
	}
	return cmd
}

// shortID is how the image commands show a base's id: its first 12 digits.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func built(img api.Image) string {
	if img.Built.IsZero() {
		return "-"
	}
	return ago(img.Built)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// sizeOf is n bytes for people: 512 B, 12 KiB, 3.4 MiB, 389 MiB, 1.8 GiB.
func sizeOf(n int64) string {
	const kib, mib, gib = 1 << 10, 1 << 20, 1 << 30
	switch {
	case n < kib:
		return fmt.Sprintf("%d B", n)
	case n < mib:
		return fmt.Sprintf("%d KiB", (n+kib/2)/kib)
	case n < 10*mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n < gib:
		return fmt.Sprintf("%d MiB", (n+mib/2)/mib)
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/gib)
}
