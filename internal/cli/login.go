package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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
		Long: `Log in to an fcm daemon as yourself: fcm prints a URL (and opens it in
your browser when it can); you sign in with the daemon's OIDC provider (Google
by default) and confirm on fcm's page, which names the machine and address the
login came from. The browser then hands the login back to fcm on this machine
(a redirect to a port fcm listens on at 127.0.0.1), so only a browser on this
computer can complete it. fcm saves a new token for you in ~/.fcm-token and
the daemon's URL in ~/.fcm-host (both mode 0600), which later commands use.
You see and manage only your own VMs. Tokens expire (90 days by default): run
fcm login again to renew.

With --no-browser (a shell on another machine), open the URL in any browser;
after you confirm, the page shows a code that you type into fcm login. Never
give that code to anyone.

The daemon is --host, else FCM_HOST, else ~/.fcm-host, else
http://127.0.0.1:7777. Your email must be on the daemon's allow-list (the admin
sets it with fcm users allow). fcm logout revokes the token.`,
		Example: `  fcm login --host https://fcm.example.com
  fcm login --no-browser    # in a remote shell: open the URL elsewhere, type the code it shows`,
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
			return login(cmd, host, noBrowser)
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "the daemon's URL, e.g. https://fcm.example.com (default: FCM_HOST, else ~/.fcm-host)")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "for a browser on another device: print the URL, then read the code the page shows after you confirm")
	return cmd
}

// login runs one login against host and saves its token and host. By
// default the CLI listens on a loopback port and the browser, once the person
// confirmed, brings it the login's grant (RFC 8252): only a browser on this
// machine can. With noBrowser (a remote shell) the page shows a code after
// the confirm, which the person types here.
func login(cmd *cobra.Command, host string, noBrowser bool) error {
	out, ctx := cmd.OutOrStdout(), cmd.Context()
	tokenPath, err := homeFile(client.TokenFileName)
	if err != nil {
		return err
	}
	hostPath, err := homeFile(client.HostFileName)
	if err != nil {
		return err
	}
	grants := make(chan string, 4)
	req := api.LoginStartRequest{}
	req.Hostname, _ = os.Hostname()
	if !noBrowser {
		port, stop, err := listenForGrant(grants)
		if err != nil {
			return err
		}
		defer stop()
		req.Port = port
	}
	c := &client.Client{Host: host, HTTP: &http.Client{}}
	start, err := c.StartLogin(ctx, req)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeLoginDisabled {
			fmt.Fprintln(cmd.ErrOrStderr(), ae.Message)
			return exitCode(1)
		}
		return err
	}
	if err := checkLoginURL(host, start.URL); err != nil {
		return fmt.Errorf("%w: not opening it (is %s really your fcm daemon?)", err, host)
	}
	if h, remote := client.PlainRemote(host); remote {
		fmt.Fprintf(cmd.ErrOrStderr(), "fcm: warning: your new token will come back in clear over http:// from %s; anyone on the way can read it (use https://)\n", h)
	}
	began := time.Now()
	lifetime := start.ExpiresAt.Sub(began).Round(time.Minute)
	if noBrowser {
		fmt.Fprintf(out, "To log in, open this URL in a browser (on any device):\n  %s\nsign in, confirm, then type here the code the page shows.\nCode: ", start.URL)
		go readCodes(cmd.InOrStdin(), grants)
	} else {
		fmt.Fprintf(out, "To log in, open this URL in a browser on this computer:\n  %s\n(a browser on another device: use fcm login --no-browser)\nWaiting for you to sign in... (Ctrl+C to give up)\n", start.URL)
		openBrowser(start.URL)
	}
	every := loginPollInterval(start.Interval)
	var unreachableSince time.Time
	var grant string
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("login given up: %w", ctx.Err())
		case g, ok := <-grants:
			if !ok {
				return errors.New("login given up: no code was typed (standard input ended)")
			}
			grant = g
		case <-time.After(every):
		}
		res, pending, err := c.PollLogin(ctx, start.ID, start.PollToken, grant)
		var ue *client.UnreachableError
		var ae *api.Error
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
		case errors.As(err, &ae) && ae.Code == api.CodeForbidden && noBrowser:
			fmt.Fprintf(out, "That code is not the one the page shows. Code: ")
			grant = ""
			continue
		case errors.As(err, &ae) && ae.Code == api.CodeForbidden:
			grant = "" // not the daemon's grant (something else called the port): wait for the real one
			continue
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
		if noBrowser {
			fmt.Fprintln(out)
		}
		return saveLogin(cmd, host, tokenPath, hostPath, res)
	}
}

// listenForGrant serves http://127.0.0.1:<port>/done, where the browser
// brings the login's grant after the person confirmed; grants receives each.
func listenForGrant(grants chan<- string) (port int, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, fmt.Errorf("listen on a loopback port for the browser (or use fcm login --no-browser): %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /done", func(w http.ResponseWriter, r *http.Request) {
		if g := r.URL.Query().Get("grant"); g != "" {
			select {
			case grants <- g:
			default:
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		fmt.Fprint(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fcm login</title>`+
			`<style>body{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}</style></head>`+
			`<body><h1>fcm login</h1><p id="done">Back to your terminal: fcm login finishes there. You can close this tab.</p></body></html>`)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return ln.Addr().(*net.TCPAddr).Port, func() { srv.Close() }, nil
}

// readCodes sends each non-empty line of in to codes, and closes codes at
// the end of in.
func readCodes(in io.Reader, codes chan<- string) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			codes <- line
		}
	}
	close(codes)
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
