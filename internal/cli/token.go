package cli

import (
	"fmt"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage the daemon's admin token",
		Args:  noArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "rotate",
		Short: "Replace the admin token with a new one; the old one stops working at once",
		Long: `Ask the running daemon for a new admin token (the token you use must be the
admin token). The daemon writes it to its <data-dir>/.token and refuses the old
one from then on, wherever copies of it are.

When your token came from ~/.fcm-token, the new one replaces it there (mode
0600). When it came from FCM_TOKEN, the new token is printed on stdout: put it
where FCM_TOKEN comes from. Other copies (other users, CI secrets) must be
given the new token again.

Without a running daemon: sudo fcm daemon --rotate-admin-token.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := client.FromEnv()
			resp, err := c.RotateAdminToken(cmd.Context())
			if err != nil {
				return err
			}
			if c.TokenFile == "" {
				fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
				fmt.Fprintf(cmd.ErrOrStderr(), "New admin token (fingerprint %s) above, also in the daemon's %s; the old one no longer works: replace FCM_TOKEN with it\n", resp.Fingerprint, resp.File)
				return nil
			}
			if err := client.WriteTokenFile(c.TokenFile, resp.Token); err != nil {
				return fmt.Errorf("the daemon rotated its token but %s could not be written (%w): copy it with: sudo install -m 600 -o \"$USER\" %s %s", c.TokenFile, err, resp.File, c.TokenFile)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "New admin token (fingerprint %s) written to %s and the daemon's %s; the old one no longer works\n", resp.Fingerprint, c.TokenFile, resp.File)
			return nil
		},
	})
	return cmd
}
