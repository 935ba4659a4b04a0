package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"

	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// remoteName is the git remote fcm adds, as `heroku create` adds "heroku".
const remoteName = "fcm"

func newGitRemoteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "git-remote [vm]",
		Short: "Add the git remote 'fcm' for a VM to the git repository here",
		Long: `Add (or update) the git remote 'fcm' in the current git repository, pointing at
the VM's repository on the daemon, with fcm as the remote's credential helper
(your fcm token is the password). Then deploy with:

  git push fcm main

fcm create does this by itself when run inside a git work tree.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			if _, err := client.FromEnv().GetVM(cmd.Context(), name); err != nil {
				return err
			}
			u, err := addRemote(name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Git remote %s: %s\nDeploy with: git push %s main\n", remoteName, u, remoteName)
			return nil
		},
	}
}

// setUpGit makes the current directory ready for git push fcm main: a git
// repository (made if there is none) with the remote fcm. Failures are notes:
// the VM exists either way.
func setUpGit(cmd *cobra.Command, name string) {
	if _, err := exec.LookPath("git"); err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "note: git is not installed: install it, then run 'fcm git-remote' to deploy with git push")
		return
	}
	if !inWorkTree() {
		if out, err := exec.Command("git", "init", "-q", "-b", "main").CombinedOutput(); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "note: git init: %v: %s\n", err, strings.TrimSpace(string(out)))
			return
		}
		fmt.Fprintln(cmd.OutOrStdout(), "Initialized a git repository here (branch main) for your app.")
	}
	u, err := addRemote(name)
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "note: could not add the git remote: %v\n", err)
		return
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Git remote %s: %s\nDeploy with: git push %s main\n", remoteName, u, remoteName)
}

// inWorkTree reports whether the current directory is inside a git work tree.
func inWorkTree() bool {
	out, err := exec.Command("git", "rev-parse", "--is-inside-work-tree").Output()
	return err == nil && strings.TrimSpace(string(out)) == "true"
}

// addRemote points the remote at VM name's repository and makes fcm the
// credential helper for the daemon's address.
func addRemote(name string) (string, error) {
	if !inWorkTree() {
		return "", errors.New("not inside a git repository: run 'git init' first (or cd into one)")
	}
	host := client.FromEnv().Host
	h, err := url.Parse(host)
	if err != nil || h.Host == "" {
		return "", fmt.Errorf("FCM_HOST %q is not a URL", host)
	}
	remote := host + "/git/" + name + ".git"
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	git := func(args ...string) error {
		out, err := exec.Command("git", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if exec.Command("git", "remote", "get-url", remoteName).Run() == nil {
		err = git("remote", "set-url", remoteName, remote)
	} else {
		err = git("remote", "add", remoteName, remote)
	}
	if err != nil {
		return "", err
	}
	// An empty helper first clears helpers configured elsewhere for this host.
	key := "credential." + h.Scheme + "://" + h.Host + ".helper"
	exec.Command("git", "config", "--unset-all", key).Run()
	if err := git("config", "--add", key, ""); err != nil {
		return "", err
	}
	if err := git("config", "--add", key, "!'"+self+"' git-credential"); err != nil {
		return "", err
	}
	return remote, nil
}

func newGitCredentialCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "git-credential get|store|erase",
		Short:  "Git credential helper: gives git your fcm token for the daemon",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			io.Copy(io.Discard, bufio.NewReader(os.Stdin))
			if args[0] != "get" {
				return nil
			}
			c := client.FromEnv()
			if c.Err != nil {
				return c.Err
			}
			tok := c.Token
			if tok == "" {
				return client.ErrNoToken
			}
			fmt.Fprintf(cmd.OutOrStdout(), "username=fcm\npassword=%s\n", tok)
			return nil
		},
	}
}
