// Package cli implements fcm's command line: one cobra command per subcommand.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X github.com/fcmhost/fcm/internal/cli.Version=...".
var Version = "dev"

// Main runs the command line with args and returns the process exit code. Errors
// are printed as one line on stderr.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer tellVersion(os.Stderr) // after the command and its error line
	root := newRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ec exitCode
		if errors.As(err, &ec) {
			return int(ec) // the command's output already said why
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "fcm: %v (see 'fcm %s --help')\n", err, ue.cmd)
			return 2
		}
		fmt.Fprintf(os.Stderr, "fcm: %v\n", err)
		return 1
	}
	return 0
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "fcm",
		Short: "Heroku-style apps in Firecracker microVMs on one Linux host",
		Long: `fcm runs apps in Firecracker microVMs on one bare-metal Linux host.

Start with:
  sudo fcm image build      # the guest image, once
  sudo fcm daemon           # the daemon (writes the admin token)
  fcm create                # a VM

People log in with fcm login (OIDC, Google by default) and see only their own
VMs; the admin token is for operators.

Clients find the daemon at FCM_HOST, else the URL in ~/.fcm-host (written by
fcm login), else http://127.0.0.1:7777, and authenticate with FCM_TOKEN, else
~/.fcm-token (written by fcm login, or a copy of the admin token). Both files
must be mode 0600: fcm refuses them when others can read them. From another
host use https://fcm.<domain>: fcm warns before sending the token over plain
http:// beyond this machine.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{cmd: strings.TrimPrefix(c.CommandPath(), "fcm "), err: err}
	})
	root.AddCommand(hostCommands()...)
	root.AddCommand(newCreateCmd(), newLsCmd(), newStartCmd(), newStopCmd(), newSuspendCmd(), newResumeCmd(), newUpdateCmd(), newCheckpointCmd(), newRestoreCmd(), newForkCmd(), newDomainsCmd(), newStatsCmd(), newEventsCmd(),
		newDestroyCmd(), newConsoleCmd(), newSessionsCmd(), newAttachCmd(), newVersionCmd(),
		newGitRemoteCmd(), newGitCredentialCmd(),
		newReleasesCmd(), newRollbackCmd(), newConfigCmd(), newLogsCmd(), newPsCmd(), newRestartCmd(), newRunCmd(),
		newKeysCmd(), newTokenCmd(), newLoginCmd(), newLogoutCmd(), newWhoAmICmd(), newUsersCmd(), newImageCmd())
	return root
}

// exitCode is an exit status without a message (the output said why).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError marks mistakes in how a command was called (exit status 2).
type usageError struct {
	cmd string
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// noArgs is cobra.NoArgs as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{cmd: strings.TrimPrefix(cmd.CommandPath(), "fcm "),
			err: fmt.Errorf("unexpected argument %q", args[0])}
	}
	return nil
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print fcm's version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "fcm %s\n", Version)
			return nil
		},
	}
}
