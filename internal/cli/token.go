package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "List and revoke API tokens; rotate the admin token",
		Long: `Manage API tokens. Each fcm login makes a token for its user; the daemon's
admin token is for operators.

  fcm token ls              # your tokens (the admin sees everyone's)
  fcm token revoke <id>     # revoke one ("current" is the one you use)
  fcm token rotate          # replace the admin token (admin only)`,
		Args: noArgs,
	}
	cmd.AddCommand(newTokenLsCmd(), newTokenRevokeCmd(), &cobra.Command{
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

func newTokenLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List your tokens (the admin token lists everyone's); * marks the one you use",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tokens, err := client.FromEnv().ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, tokens)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  ID\tUSER\tCREATED\tEXPIRES\tLAST USED")
			for _, t := range tokens {
				mark, user, used, expires := " ", t.User, "never", "never"
				if t.Current {
					mark = "*"
				}
				if t.Admin {
					user = "admin (the admin token)"
				}
				if !t.LastUsedAt.IsZero() {
					used = ago(t.LastUsedAt)
				}
				if !t.ExpiresAt.IsZero() {
					expires = until(t.ExpiresAt)
				}
				fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\n", mark, t.ID, user, ago(t.CreatedAt), expires, used)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newTokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke <id>",
		Short: "Revoke a token (its id as fcm token ls shows it; current is the one you use)",
		Long: `Revoke a token: it stops working at once. A user may revoke their own
tokens, the admin anyone's. "current" is the token you use (fcm logout also
removes it from ~/.fcm-token). The admin token is not revoked but rotated:
fcm token rotate.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{cmd: "token revoke", err: errors.New("takes one token id (see fcm token ls)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client.FromEnv().RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			if args[0] == "current" {
				fmt.Fprintln(cmd.OutOrStdout(), "Revoked the token you used; log in again with fcm login")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked token %s\n", args[0])
			return nil
		},
	}
}

// until says how long until t: "in 89d", "in 5h", "in 12m", or "expired".
func until(t time.Time) string {
	d := time.Until(t)
	switch {
	case d <= 0:
		return "expired"
	case d < time.Hour:
		return fmt.Sprintf("in %dm", int(d.Minutes())+1)
	case d < 48*time.Hour:
		return fmt.Sprintf("in %dh", int(d.Hours()))
	}
	return fmt.Sprintf("in %dd", int(d.Hours()/24))
}
