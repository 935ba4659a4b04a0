package cli

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newRestoreCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "restore [vm] <checkpoint>",
		Short: "Put a VM back on one of its checkpoints (undoable)",
		Long: `Put a VM's disk back as it was at one of its checkpoints (fcm checkpoint ls).

The state being replaced is saved first as a checkpoint of its own, named in
the output: restoring that one undoes the restore. A running VM is restarted
on the restored disk (its processes and memory are not in a checkpoint); a
stopped VM stays stopped.

fcm asks before it restores; without a terminal to ask on, it refuses unless
--yes is given.`,
		Example: `  fcm restore v1
  fcm restore web v3 --yes`,
		Args: vmThen("restore", "a checkpoint id (v3)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[len(args)-1]
			name, err := target(cmd, args[:len(args)-1])
			if err != nil {
				return err
			}
			if !yes {
				if err := confirmRestore(cmd, name, id); err != nil {
					return err
				}
			}
			undo := ""
			show := printProgress(cmd, fmt.Sprintf("Restoring %s to %s...", name, id))
			v, err := client.FromEnv().Restore(cmd.Context(), name, id, func(ev api.Event) {
				if ev.Step == "checkpoint" {
					undo, _, _ = strings.Cut(ev.Message, " ")
				}
				show(ev)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is on %s's disk and %s.\n", v.Name, id, v.State)
			if undo != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "What it replaced is checkpoint %s: fcm restore %s %s undoes this.\n", undo, v.Name, undo)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "restore without asking")
	return cmd
}

// errNotRestored ends a restore the person said no to.
var errNotRestored = errors.New("not restored")

// confirmRestore asks whether to restore name to checkpoint id; with no
// terminal to ask on, it refuses.
func confirmRestore(cmd *cobra.Command, name, id string) error {
	in := cmd.InOrStdin()
	if !isTerminal(in) {
		return usageError{cmd: "restore", err: fmt.Errorf("no terminal to confirm on: to restore %s to %s, run it with --yes", name, id)}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Restore %s to %s? Its disk now is kept as a new checkpoint. A running VM restarts. [y/N] ", name, id)
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errNotRestored
}

func newForkCmd() *cobra.Command {
	var req api.ForkRequest
	cmd := &cobra.Command{
		Use:   "fork [vm]",
		Short: "Make a new VM on a copy of a VM's disk or of one of its checkpoints",
		Long: `Make a new VM, yours, that boots on a copy of a VM's disk as it is now (copied
live, as for a checkpoint) or as it was at one of its checkpoints (--from).

The fork has its own name (random unless --name), address, SSH host key and
URL, and the source's size; after the copy the two share nothing. A fork of
an app keeps its releases, config vars and repository: it runs the same app
at its own URL, a preview to break as you like.`,
		Example: `  fcm fork
  fcm fork web --from v3 --name web-preview`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			from := "its disk now"
			if req.From != "" {
				from = req.From
			}
			v, err := client.FromEnv().Fork(cmd.Context(), name, req, printProgress(cmd, fmt.Sprintf("Forking %s (%s)...", name, from)))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM forked: %s (from %s, %s)\n  IP:  %s\n  URL: %s\n", v.Name, name, from, v.IP, urlNote(*v))
			return nil
		},
	}
	cmd.Flags().StringVar(&req.From, "from", "", "a checkpoint to fork (v3; default: the VM's disk now)")
	cmd.Flags().StringVar(&req.Name, "name", "", "the fork's name (default: random adjective-noun)")
	return cmd
}
