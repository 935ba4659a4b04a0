package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// sleepCmd is fcm suspend or fcm resume: op on the VM, then "<name> is
// <state><again> (<time>)".
func sleepCmd(use, short, long, again string, op func(*client.Client, context.Context, string) (*api.VM, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " [vm]",
		Short: short,
		Long:  long,
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			t := time.Now()
			v, err := op(client.FromEnv(), cmd.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is %s%s (%s)\n", v.Name, v.State, again, time.Since(t).Round(time.Millisecond))
			return nil
		},
	}
}

func newSuspendCmd() *cobra.Command {
	return sleepCmd("suspend", "Write a running VM's memory to disk and free the host of it",
		`Suspend a running VM: its guest is paused, its device state written beside
its memory (already in a file in the VM's directory) and its hypervisor ends,
so the host has its memory and CPU back. It keeps its name, address, URL,
disks and console sessions (tmux runs on in its memory). A request to its URL,
fcm console, run, logs, ps, a git push or fcm resume wakes it where it was:
the same boot, its processes running on.

A VM created with --suspend-after (or under the daemon's default) is
suspended by itself once it sits idle that long.`, "", (*client.Client).SuspendVM)
}

func newResumeCmd() *cobra.Command {
	return sleepCmd("resume", "Wake a suspended VM where it was", "", " again", (*client.Client).ResumeVM)
}

func newUpdateCmd() *cobra.Command {
	var suspendAfter string
	cmd := &cobra.Command{
		Use:   "update [vm]",
		Short: "Change a VM's settings (how long it may sit idle before it sleeps)",
		Long: `Change a VM's settings in place, without restarting it.

--suspend-after: how long the VM may sit idle before the daemon suspends it
(no request through its URL, no console attached, no command or deploy
running); the next request or command wakes it where it was. off: never by
itself. The idle time counts from the change.`,
		Example: `  fcm update --suspend-after 10m
  fcm update api --suspend-after off`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("suspend-after") {
				return usageError{cmd: "update", err: fmt.Errorf("nothing to change: give --suspend-after")}
			}
			if _, err := api.ParseSuspendAfter(suspendAfter); err != nil {
				return usageError{cmd: "update", err: err}
			}
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			v, err := client.FromEnv().UpdateVM(cmd.Context(), name, api.UpdateVMRequest{SuspendAfter: &suspendAfter})
			if err != nil {
				return err
			}
			if v.SuspendAfter == "" {
				fmt.Fprintf(cmd.OutOrStdout(), "%s never sleeps by itself\n", v.Name)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s sleeps after %s idle\n", v.Name, v.SuspendAfter)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&suspendAfter, "suspend-after", "", "idle time before the VM is suspended: 30s, 5m, 1h, or off")
	return cmd
}
