package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newConsoleCmd() *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "console [vm]",
		Short: "Open a persistent shell in a VM (tmux); Ctrl+] detaches",
		Long: `Open a shell in a VM (default: the one in ./.fcm). It runs in a tmux session
inside the VM, so it survives a closed laptop, a dropped connection and a daemon
restart: Ctrl+] detaches and leaves it running, 'exit' ends it, and
'fcm console <vm> -s <id>' reattaches with the screen as it was.`,
		Example: `  fcm console
  fcm console cosmic-nova -s brook
  fcm console ls`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := target(cmd, args)
			if err != nil {
				return err
			}
			return openConsole(cmd, vm, id)
		},
	}
	cmd.Flags().StringVarP(&id, "session", "s", "", "reattach to this session (default: a new one)")
	cmd.AddCommand(newConsoleLsCmd(), newConsoleKillCmd())
	return cmd
}

// openConsole attaches the terminal to session id of vm, made first if id is "".
func openConsole(cmd *cobra.Command, vm, id string) error {
	if err := awake(cmd, vm); err != nil {
		return err
	}
	c := client.FromEnv()
	if id == "" {
		s, err := c.CreateSession(cmd.Context(), vm, "")
		if err != nil {
			return err
		}
		id = s.ID
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "Session: %s\nReconnect with: fcm console %s -s %s\nCtrl+] detaches; exit ends the session.\n", id, vm, id)
	return attach(cmd.Context(), c, vm, id, out)
}

// newSessionsCmd and newAttachCmd are the seed's names for console ls and
// console -s.
func newSessionsCmd() *cobra.Command {
	cmd := newConsoleLsCmd()
	cmd.Use = "sessions [vm]"
	cmd.Short = "List console sessions (same as fcm console ls)"
	return cmd
}

func newAttachCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "attach <vm> <id>",
		Short:   "Reattach to a console session (same as fcm console <vm> -s <id>)",
		Example: "  fcm attach cosmic-nova brook",
		Args:    twoArgs("attach", "a vm and a session id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return openConsole(cmd, args[0], args[1])
		},
	}
}

func twoArgs(name, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 2 {
			return usageError{cmd: name, err: fmt.Errorf("takes %s, got %d arguments", what, len(args))}
		}
		return nil
	}
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
		Args:  twoArgs("console kill", "a vm and a session id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client.FromEnv().KillSession(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Killed session %s on %s\n", args[1], args[0])
			return nil
		},
	}
}
