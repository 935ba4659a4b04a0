package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// tokenSource says where c's token came from.
func tokenSource(c *client.Client) string {
	if c.TokenFile != "" {
		return tilde(c.TokenFile)
	}
	return "FCM_TOKEN"
}

// whoAmIJSON is what whoami --json prints: the daemon's answer and where
// the CLI found the host and the token.
type whoAmIJSON struct {
	api.WhoAmI
	Host        string `json:"host"`
	TokenSource string `json:"token_source"`
}

func newWhoAmICmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show who your token is (a user or the admin token) and which daemon it is for",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := client.FromEnv()
			me, err := c.WhoAmI(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, whoAmIJSON{WhoAmI: *me, Host: c.Host, TokenSource: tokenSource(c)})
			}
			out := cmd.OutOrStdout()
			if me.User != nil {
				fmt.Fprintln(out, userLine(*me.User))
			} else {
				fmt.Fprintln(out, "admin (the admin token)")
			}
			fmt.Fprintf(out, "role:  %s\nhost:  %s\ntoken: %s (from %s)\n", me.Role, c.Host, me.TokenID, tokenSource(c))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newLogoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Revoke your token on the daemon and remove ~/.fcm-token and ~/.fcm-host",
		Long: `Revoke the token you use (fcm login's) on the daemon, then remove
~/.fcm-token and ~/.fcm-host.

The admin token is never revoked this way (every operator's copy would stop
working): fcm logout only removes your local copy, and fcm token rotate
replaces it. A token from FCM_TOKEN is revoked; unset FCM_TOKEN afterwards.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			c := client.FromEnv()
			if c.Err == nil && c.Token == "" {
				fmt.Fprintf(out, "Not logged in: no FCM_TOKEN and no %s.\n", "~/"+client.TokenFileName)
				return removeLoginFiles(cmd, false)
			}
			me, err := c.WhoAmI(cmd.Context())
			switch {
			case client.IsUnauthorized(err):
				fmt.Fprintf(out, "The daemon at %s no longer accepts this token (already revoked).\n", c.Host)
				if c.TokenFile == "" {
					fmt.Fprintln(out, "It came from FCM_TOKEN: unset FCM_TOKEN.")
					return nil
				}
				return removeLoginFiles(cmd, true)
			case err != nil:
				return err
			case me.Role == api.RoleAdmin:
				if c.TokenFile == "" {
					fmt.Fprintln(out, "This is the admin token, from FCM_TOKEN: unset FCM_TOKEN. It still works: rotate it with fcm token rotate.")
					return nil
				}
				if err := removeLoginFiles(cmd, true); err != nil {
					return err
				}
				fmt.Fprintln(out, "That was the admin token: it still works (the daemon keeps it); rotate it with fcm token rotate.")
				return nil
			}
			err = c.RevokeToken(cmd.Context(), "current")
			switch {
			case client.IsUnauthorized(err):
				fmt.Fprintf(out, "The daemon at %s no longer accepts this token (already revoked).\n", c.Host)
			case err != nil:
				return err
			default:
				fmt.Fprintf(out, "Logged out of %s: token %s revoked.\n", c.Host, me.TokenID)
			}
			if c.TokenFile == "" {
				fmt.Fprintln(out, "The token came from FCM_TOKEN: unset FCM_TOKEN (it no longer works).")
				return nil
			}
			return removeLoginFiles(cmd, true)
		},
	}
}

// removeLoginFiles removes ~/.fcm-token and ~/.fcm-host, saying so when
// verbose.
func removeLoginFiles(cmd *cobra.Command, verbose bool) error {
	var removed []string
	for _, name := range []string{client.TokenFileName, client.HostFileName} {
		path, err := homeFile(name)
		if err != nil {
			return err
		}
		err = os.Remove(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove %s: %w", tilde(path), err)
		}
		removed = append(removed, tilde(path))
	}
	if verbose && len(removed) > 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "Removed %s.\n", strings.Join(removed, " and "))
	}
	return nil
}
