package cli

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// accessRules explains the allow-list; the users commands' help shows it.
const accessRules = `Who may log in is decided by the allow-list, a list of rules:
  alice@example.com    one email
  @example.com         every email of a domain
  *                    anyone with a verified email
An email rule beats a domain rule, which beats *; at the same rank deny beats
allow. An empty list lets nobody in. Rules given to the daemon with --allow
are fixed while it runs (fcm users ls shows their source: flag); the ones
added with fcm users allow and deny show source api. Quote * in the shell:
fcm users allow '*'.`

func newUsersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Manage who may log in, and the users who did (admin only)",
		Long: "Manage the people who log in with fcm login (admin token only).\n\n" + accessRules + `

  fcm users ls
  fcm users allow alice@example.com @example.org
  fcm users deny bob@example.org
  fcm users rm alice@example.com --vms keep`,
		Args: noArgs,
	}
	cmd.AddCommand(newUsersLsCmd(), newUsersRuleCmd(true), newUsersRuleCmd(false), newUsersRmCmd())
	return cmd
}

func newUsersLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the users and the allow-list",
		Long:    "List the users who logged in, then the allow-list's rules.\n\n" + accessRules,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := client.FromEnv().ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, resp)
			}
			out := cmd.OutOrStdout()
			if !resp.OIDC {
				fmt.Fprintln(out, "Logins are off: the daemon has no OIDC client configured.")
			}
			if len(resp.Users) == 0 {
				fmt.Fprintln(out, "No users yet: they appear when they first log in with fcm login.")
			} else {
				tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "EMAIL\tNAME\tALLOWED\tVMS\tTOKENS\tLAST LOGIN")
				for _, u := range resp.Users {
					name, allowed, vms, last := dash(u.Name), "no", dash(strings.Join(u.VMs, ",")), "never"
					if u.Allowed {
						allowed = "yes"
					}
					if !u.LastLoginAt.IsZero() {
						last = ago(u.LastLoginAt)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", u.Email, name, allowed, vms, u.Tokens, last)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			fmt.Fprintln(out)
			printRules(cmd, resp.Rules)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printRules prints the allow-list.
func printRules(cmd *cobra.Command, rules []api.AccessRule) {
	out := cmd.OutOrStdout()
	if len(rules) == 0 {
		fmt.Fprintln(out, "Allow-list: empty, nobody may log in (add rules with fcm users allow <email|@domain|*>)")
		return
	}
	fmt.Fprintln(out, "Allow-list:")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, r := range rules {
		verb, source := "deny", r.Source
		if r.Allow {
			verb = "allow"
		}
		if source == "flag" {
			source = "flag (--allow, fixed while the daemon runs)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", verb, r.Pattern, source)
	}
	tw.Flush()
}

// newUsersRuleCmd is fcm users allow (allow true) or fcm users deny.
func newUsersRuleCmd(allow bool) *cobra.Command {
	verb, short := "deny", "Deny emails, domains or everyone (*) the login, even where a lower-ranked rule allows"
	if allow {
		verb, short = "allow", "Let emails, domains (@example.com) or everyone with a verified email (*) log in"
	}
	return &cobra.Command{
		Use:   verb + " <email|@domain|*>...",
		Short: short,
		Long:  short + ".\n\n" + accessRules,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{cmd: "users " + verb, err: errors.New("takes one or more of: an email, @domain, * (quote it in the shell: '*')")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c := client.FromEnv()
			var resp *api.ListUsersResponse
			for _, pattern := range args {
				var err error
				if allow {
					resp, err = c.Allow(cmd.Context(), pattern)
				} else {
					resp, err = c.Deny(cmd.Context(), pattern)
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", verb, pattern, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", map[bool]string{true: "Allowed", false: "Denied"}[allow], pattern)
			}
			printRules(cmd, resp.Rules)
			return nil
		},
	}
}

// errNotRemoved ends a users rm the person cancelled.
var errNotRemoved = errors.New("not removed")

func newUsersRmCmd() *cobra.Command {
	var vms string
	cmd := &cobra.Command{
		Use:     "rm <email|id>",
		Aliases: []string{"remove"},
		Short:   "Remove a user: revoke their tokens, and destroy or keep their VMs",
		Long: `Remove a user: their tokens are revoked at once, and their VMs are destroyed
(--vms destroy) or kept, owned by the admin from then on (--vms keep). Without
--vms, fcm asks when the user owns VMs, or fails when there is no terminal.

If the allow-list still lets them in, they can log in again as a new user:
deny them too (fcm users deny <email>).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{cmd: "users rm", err: errors.New("takes one user: an email or id (see fcm users ls)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if vms != "" && vms != "destroy" && vms != "keep" {
				return usageError{cmd: "users rm", err: fmt.Errorf("--vms %q: want destroy or keep", vms)}
			}
			c := client.FromEnv()
			resp, err := c.RemoveUser(cmd.Context(), args[0], vms)
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeHasVMs {
				if vms, err = askVMs(cmd, c, args[0], ae); err != nil {
					return err
				}
				resp, err = c.RemoveUser(cmd.Context(), args[0], vms)
			}
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("Removed %s: %d token%s revoked", resp.User.Email, resp.TokensRevoked, map[bool]string{true: "", false: "s"}[resp.TokensRevoked == 1])
			if len(resp.VMsDestroyed) > 0 {
				msg += ", VMs destroyed: " + strings.Join(resp.VMsDestroyed, ", ")
			}
			if len(resp.VMsKept) > 0 {
				msg += ", VMs kept (now the admin's): " + strings.Join(resp.VMsKept, ", ")
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&vms, "vms", "", "what to do with the user's VMs: destroy or keep (the admin owns them then)")
	return cmd
}

// askVMs asks what to do with the VMs of user, whom the daemon would not
// remove without knowing (has); without a terminal it fails naming --vms.
func askVMs(cmd *cobra.Command, c *client.Client, user string, has *api.Error) (string, error) {
	who, owns := user, has.Message
	if resp, err := c.ListUsers(cmd.Context()); err == nil {
		for _, u := range resp.Users {
			if u.Email == user || u.ID == user {
				who = u.Email
				owns = fmt.Sprintf("%s owns %d VMs (%s)", u.Email, len(u.VMs), strings.Join(u.VMs, ", "))
				if len(u.VMs) == 1 {
					owns = fmt.Sprintf("%s owns 1 VM (%s)", u.Email, u.VMs[0])
				}
			}
		}
	}
	in := cmd.InOrStdin()
	if !isTerminal(in) {
		return "", usageError{cmd: "users rm", err: fmt.Errorf("%s: say what to do with them: fcm users rm %s --vms destroy|keep", strings.TrimSuffix(owns, "."), who)}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s: destroy them, keep them (the admin will own them), or cancel? [d/k/C] ", owns)
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "d", "destroy":
		return "destroy", nil
	case "k", "keep":
		return "keep", nil
	}
	return "", errNotRemoved
}
