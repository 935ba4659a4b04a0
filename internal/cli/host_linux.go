//go:build linux

package cli

import (
	"os"

	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/spf13/cobra"
)

// hostCommands are the commands of the host and the guest (the daemon, what
// runs inside a VM, git's hooks; fcm image build is in imageHostCommands):
// Linux only. The client is the rest, and builds for macOS too.
func hostCommands() []*cobra.Command {
	return []*cobra.Command{newDaemonCmd(), newGuestCmd(), newHookCmd()}
}

func newHookCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "hook", Short: "Git hooks fcm installs in its repositories", Hidden: true}
	cmd.AddCommand(&cobra.Command{
		Use:   "pre-receive",
		Short: "Build and release the pushed tree before the branch moves",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := deploy.PreReceive(cmd.Context(), os.Stdin, os.Stdout); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	})
	return cmd
}
