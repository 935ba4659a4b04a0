package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newConsoleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Persistent console sessions (tmux in the VM)",
		Long: `Console sessions are tmux sessions inside a VM: they survive disconnects and
daemon restarts. 'fcm console ls' lists them and 'fcm console kill' ends one.
Attaching from the CLI is not built yet.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("attaching to a console is not built yet; list sessions with 'fcm console ls'")
		},
	}
	cmd.AddCommand(newConsoleLsCmd(), newConsoleKillCmd())
	return cmd
}

func newConsoleLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls [vm]",
		Short: "List console sessions (of one VM, or of all your running VMs)",
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			vm := ""
			if len(args) == 1 {
				vm = args[0]
			}
			sessions, err := client.FromEnv().ListSessions(cmd.Context(), vm)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(sessions) == 0 {
				fmt.Fprintln(out, "No console sessions.")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tVM\tCREATED\tATTACHED")
			for _, s := range sessions {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.ID, s.VM, ago(s.Created), s.Attached)
			}
			return tw.Flush()
		},
	}
}

func newConsoleKillCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "kill <vm> <id>",
		Short: "End a console session and what runs in it",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{cmd: "console kill", err: fmt.Errorf("takes a vm and a session id, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client.FromEnv().KillSession(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Killed session %s on %s\n", args[1], args[0])
			return nil
		},
	}
}
