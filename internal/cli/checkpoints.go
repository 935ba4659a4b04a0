package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newCheckpointCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "checkpoint",
		Short: "Take, list and remove checkpoints of a VM's disk",
		Long: `A checkpoint is a copy of a VM's disk as it was at one moment: every file
in /root, /usr, /etc and the rest. It is taken live: the guest syncs its
filesystems, then the VM is paused for the moment of the copy (milliseconds:
the store shares the disk's blocks instead of copying them) and runs on. The
disk is then as after a clean power cut at that moment; running processes and
memory are not in it.

Checkpoints are numbered per VM: v1, v2, ... A VM keeps its last 20 by
default (fcm daemon --keep-checkpoints), the oldest removed first.`,
	}
	cmd.AddCommand(newCheckpointCreateCmd(), newCheckpointLsCmd(), newCheckpointRmCmd())
	return cmd
}

func newCheckpointCreateCmd() *cobra.Command {
	var message string
	cmd := &cobra.Command{
		Use:     "create [vm]",
		Short:   "Take a checkpoint of a VM's disk, live",
		Example: `  fcm checkpoint create -m "before the upgrade"`,
		Args:    maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			t := time.Now()
			c, err := client.FromEnv().CreateCheckpoint(cmd.Context(), name, message)
			if err != nil {
				return err
			}
			paused := ""
			if c.Paused != "" {
				paused = ", the VM paused for " + c.Paused
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Checkpoint %s created (%s%s)\n", c.ID, time.Since(t).Round(time.Millisecond), paused)
			return nil
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", "what it is for")
	return cmd
}

func newCheckpointLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [vm]",
		Short: "List a VM's checkpoints, oldest first",
		Long: `List a VM's checkpoints, oldest first: id, when, who took it, what it holds of
its own (what removing it gives back) and its message.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			cps, err := client.FromEnv().Checkpoints(cmd.Context(), name)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(cps)
			}
			if len(cps) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s has no checkpoints: fcm checkpoint create takes one\n", name)
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tCREATED\tBY\tSIZE\tMESSAGE")
			for _, c := range cps {
				msg := c.Message
				if c.Auto != "" {
					msg = "(" + c.Auto + ") " + msg
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.ID, c.Created.Local().Format("2006-01-02 15:04:05"), c.By, humanBytes(c.Bytes), msg)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCheckpointRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm [vm] <id>",
		Short:   "Remove a checkpoint",
		Example: `  fcm checkpoint rm v3`,
		Args:    vmThen("checkpoint rm", "a checkpoint id (v3)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[len(args)-1]
			name, err := target(cmd, args[:len(args)-1])
			if err != nil {
				return err
			}
			if err := client.FromEnv().RemoveCheckpoint(cmd.Context(), name, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Checkpoint %s of %s removed\n", id, name)
			return nil
		},
	}
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
