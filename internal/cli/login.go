package cli

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// loginPollInterval turns the daemon's poll interval (seconds) into the wait
// between polls; tests make it short.
var loginPollInterval = func(seconds int) time.Duration {
	if seconds <= 0 {
		seconds = 5
	}
	return time.Duration(seconds) * time.Second
}

// openBrowser tries to show url in the person's browser, without waiting for
// it and without failing: the URL is printed anyway.
var openBrowser = func(url string) {
	var name string
	switch {
	case runtime.GOOS == "darwin":
		name = "open"
	case os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "":
		name = "xdg-open"
	default:
		return
	}
	cmd := exec.Command(name, url)
	if cmd.Start() == nil {
		go cmd.Wait()
	}
}

// checkLoginURL says whether the CLI may open loginURL, which the daemon at
// host returned: https (or http to a loopback address) on host's own name,
// nothing else (not file:, not a custom scheme, not another site).
func checkLoginURL(host, loginURL string) error {
	h, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("the daemon's URL %q: %w", host, err)
	}
	u, err := url.Parse(loginURL)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("the daemon gave a login URL that is not one: %q", loginURL)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	default:
		return fmt.Errorf("the daemon gave a login URL that is neither https nor http on this machine: %q", loginURL)
	}
	if !strings.EqualFold(u.Hostname(), h.Hostname()) {
		return fmt.Errorf("the daemon gave a login URL on another host (%s, not %s): %q", u.Hostname(), h.Hostname(), loginURL)
	}
	return nil
}

// isLoopback reports whether host is localhost or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// homeFile is the path of name in the home directory.
func homeFile(name string) (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no home directory for %s: %w", name, err)
	}
	return filepath.Join(home, name), nil
}

// tilde shows path with the home directory as ~.
func tilde(path string) string {
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(path, home+"/") {
		return "~" + strings.TrimPrefix(path, home)
	}
	return path
}

// userLine names a user: "alice@example.com (Alice Liddell)".
func userLine(u api.User) string {
	if u.Name == "" {
		return u.Email
	}
	return u.Email + " (" + u.Name + ")"
}

func newLoginCmd() *cobra.Command {
	var host string
	var noBrowser bool
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in with your OIDC account (Google by default) and save a token",
		Long: `Log in to an fcm daemon as yourself: fcm prints a URL and a code, you open
the URL in a browser, sign in with the daemon's OIDC provider (Google by
default) and check that the page shows the same code. fcm then saves a new
token for you in ~/.fcm-token and the daemon's URL in ~/.fcm-host (both mode
0600), which later commands use. You see and manage only your own VMs.

The daemon is --host, else FCM_HOST, else ~/.fcm-host, else
http://127.0.0.1:7777. Your email must be on the daemon's allow-list (the admin
sets it with fcm users allow). fcm logout revokes the token.`,
		Example: `  fcm login --host https://fcm.example.com
  fcm login --no-browser    # on a machine without a browser: open the URL elsewhere`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if host == "" {
				var err error
				if host, _, err = client.HostFromEnv(); err != nil {
					return err
				}
			}
			host = strings.TrimRight(host, "/")
			if u, err := url.Parse(host); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				return usageError{cmd: "login", err: fmt.Errorf("%q is not the daemon's URL (want e.g. https://fcm.example.com)", host)}
			}
			return login(cmd, host, !noBrowser)
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "the daemon's URL, e.g. https://fcm.example.com (default: FCM_HOST, else ~/.fcm-host)")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "do not try to open a browser; just print the URL")
	return cmd
}

// login runs one login against host and saves its token and host.
func login(cmd *cobra.Command, host string, browser bool) error {
	out, ctx := cmd.OutOrStdout(), cmd.Context()
	tokenPath, err := homeFile(client.TokenFileName)
	if err != nil {
		return err
	}
	hostPath, err := homeFile(client.HostFileName)
	if err != nil {
		return err
	}
	c := &client.Client{Host: host, HTTP: &http.Client{}}
	start, err := c.StartLogin(ctx)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeLoginDisabled {
			fmt.Fprintln(cmd.ErrOrStderr(), ae.Message)
			return exitCode(1)
		}
		return err
	}
	if h, remote := client.PlainRemote(host); remote {
		fmt.Fprintf(cmd.ErrOrStderr(), "fcm: warning: your new token will come back in clear over http:// from %s; anyone on the way can read it (use https://)\n", h)
	}
	began := time.Now()
	lifetime := start.ExpiresAt.Sub(began).Round(time.Minute)
	if err := checkLoginURL(host, start.URL); err != nil {
		return fmt.Errorf("%w: not opening it (is %s really your fcm daemon?)", err, host)
	}
	fmt.Fprintf(out, "To log in, open this URL in a browser:\n  %s\nand check that the page shows the code: %s\nWaiting for you to sign in... (Ctrl+C to give up)\n", start.URL, start.Code)
	if browser {
		openBrowser(start.URL)
	}
	every := loginPollInterval(start.Interval)
	var unreachableSince time.Time
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("login given up: %w", ctx.Err())
		case <-time.After(every):
		}
		res, pending, err := c.PollLogin(ctx, start.ID, start.PollToken)
		var ue *client.UnreachableError
		switch {
		case pending:
			unreachableSince = time.Time{}
			continue
		case errors.As(err, &ue):
			// A daemon restarting or a network hiccup: keep trying a while.
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
			}
			if time.Since(unreachableSince) < 30*time.Second {
				continue
			}
			return err
		case client.IsLoginExpired(err):
			if lifetime <= 0 {
				lifetime = time.Since(began).Round(time.Minute)
			}
			return fmt.Errorf("the login expired after %s: run fcm login again", minutes(lifetime))
		case err != nil:
			if ctx.Err() != nil {
				return fmt.Errorf("login given up: %w", ctx.Err())
			}
			return err
		}
		return saveLogin(cmd, host, tokenPath, hostPath, res)
	}
}

// minutes says d as "10 minutes", "1 minute" or, under a minute, "less than a minute".
func minutes(d time.Duration) string {
	switch n := int(d / time.Minute); n {
	case 0:
		return "less than a minute"
	case 1:
		return "1 minute"
	default:
		return fmt.Sprintf("%d minutes", n)
	}
}

// saveLogin writes the login's token and host to their files and says who
// is logged in.
func saveLogin(cmd *cobra.Command, host, tokenPath, hostPath string, res *api.LoginResult) error {
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	old, _ := os.ReadFile(tokenPath) // its mode does not matter: it is replaced
	if err := client.WriteTokenFile(tokenPath, res.Token); err != nil {
		return fmt.Errorf("logged in, but %s could not be written: %w", tilde(tokenPath), err)
	}
	if prev := strings.TrimSpace(string(old)); prev != "" && prev != res.Token {
		fmt.Fprintf(out, "Replaced the token that was in %s (it was not revoked).\n", tilde(tokenPath))
	}
	if err := client.WriteTokenFile(hostPath, host); err != nil {
		return fmt.Errorf("logged in, but %s could not be written: %w", tilde(hostPath), err)
	}
	fmt.Fprintf(out, "Logged in to %s as %s\n", host, userLine(res.User))
	if os.Getenv("FCM_TOKEN") != "" {
		fmt.Fprintf(errOut, "note: FCM_TOKEN is set and comes before %s: unset it to use this login\n", tilde(tokenPath))
	}
	if h := strings.TrimRight(os.Getenv("FCM_HOST"), "/"); h != "" && h != host {
		fmt.Fprintf(errOut, "note: FCM_HOST (%s) comes before %s: unset it to use %s\n", h, tilde(hostPath), host)
	}
	return nil
}
