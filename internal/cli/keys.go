package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "SSH keys that may git push over SSH",
		Long: `Manage the SSH public keys that may push to your apps over SSH:

  fcm keys add                  # ~/.ssh/id_ed25519.pub (else ~/.ssh/id_rsa.pub)
  git push ssh://git@<host>:2222/<app>.git main

The daemon serves git over SSH on --git-listen (default :2222) as user git.`,
		Args: noArgs,
	}
	cmd.AddCommand(newKeysAddCmd(), newKeysLsCmd(), newKeysRmCmd())
	return cmd
}

// defaultKeyFiles are tried in order when keys add names no file.
var defaultKeyFiles = []string{"id_ed25519.pub", "id_rsa.pub"}

func newKeysAddCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "add [file|-]",
		Short: "Add an SSH public key (default ~/.ssh/id_ed25519.pub, else ~/.ssh/id_rsa.pub; - reads stdin)",
		Long: `Add an SSH public key that may git push to your apps over SSH.

The daemon asks for proof that you hold the key: fcm signs a one-time
challenge with it using ssh-keygen -Y sign. So the private key must be
beside the .pub file (ssh-keygen asks for its passphrase, if any) or
in ssh-agent. Nobody can add a public key that is not theirs.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageError{cmd: "keys add", err: fmt.Errorf("takes at most one key file, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			line, path, err := readPublicKey(cmd.InOrStdin(), args)
			if err != nil {
				return err
			}
			c := client.FromEnv()
			req := api.AddKeyRequest{PublicKey: line}
			// A line that is no key goes as it is: the daemon says what is
			// wrong with it.
			if pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
				if req.Challenge, req.Signature, err = proveKey(cmd, c, pub, path); err != nil {
					return err
				}
			}
			k, err := c.AddKey(cmd.Context(), req)
			if err != nil {
				return err
			}
			comment := ""
			if k.Comment != "" {
				comment = " (" + k.Comment + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Key added: %s%s\n", k.Fingerprint, comment)
			return nil
		},
	}
}

// readPublicKey reads the key file named (- for stdin), or the first default
// one that exists, and returns its text and path ("" for stdin).
func readPublicKey(stdin io.Reader, args []string) (line, path string, err error) {
	if len(args) == 1 && args[0] == "-" {
		data, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		return string(data), "", err
	}
	if len(args) == 1 {
		data, err := os.ReadFile(args[0])
		if err != nil {
			return "", "", fmt.Errorf("read key: %w", err)
		}
		return string(data), args[0], nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", "", fmt.Errorf("no key file named and no home directory: %w", err)
	}
	var tried []string
	for _, f := range defaultKeyFiles {
		p := filepath.Join(home, ".ssh", f)
		data, err := os.ReadFile(p)
		if err == nil {
			return string(data), p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("read key: %w", err)
		}
		tried = append(tried, p)
	}
	return "", "", fmt.Errorf("no SSH public key found (tried %s): make one with 'ssh-keygen -t ed25519', or name a file: fcm keys add <file.pub>",
		strings.Join(tried, ", "))
}

func newKeysLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List your SSH keys",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := client.FromEnv().ListKeys(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(cmd, keys)
			}
			if len(keys) == 0 {
				fmt.Fprintln(out, "No SSH keys. Add one with: fcm keys add")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "FINGERPRINT\tCOMMENT\tADDED")
			for _, k := range keys {
				comment := k.Comment
				if comment == "" {
					comment = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Fingerprint, comment, ago(k.AddedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKeysRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm <fingerprint>",
		Aliases: []string{"remove"},
		Short:   "Remove an SSH key (its fingerprint as fcm keys ls shows it)",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{cmd: "keys rm", err: errors.New("takes one key fingerprint (see fcm keys ls)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client.FromEnv().RemoveKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Key removed: %s\n", args[0])
			return nil
		},
	}
}
