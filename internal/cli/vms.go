package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// dotFile names the VM a directory belongs to, written by create.
const dotFile = ".fcm"

// target returns the VM named on the command line, or the one in ./.fcm.
func target(cmd *cobra.Command, args []string) (string, error) {
	if len(args) > 0 {
		return args[0], nil
	}
	data, err := os.ReadFile(dotFile)
	if err != nil {
		return "", usageError{cmd: strings.TrimPrefix(cmd.CommandPath(), "fcm "),
			err: errors.New("no vm named and no .fcm file in this directory")}
	}
	name := strings.TrimSpace(string(data))
	if name == "" {
		return "", fmt.Errorf("%s is empty: name the vm on the command line", dotFile)
	}
	return name, nil
}

func maxOneArg(cmd *cobra.Command, args []string) error {
	if len(args) > 1 {
		return usageError{cmd: strings.TrimPrefix(cmd.CommandPath(), "fcm "),
			err: fmt.Errorf("takes at most one vm name, got %d arguments", len(args))}
	}
	return nil
}

// parseSize reads sizes like 2G, 512M, 10GiB, 1T or a plain byte count.
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 2G, 512M)", s)
	}
	return int64(v * float64(mult)), nil
}

// printProgress prints each step, after a header once the first step arrives
// (so a request refused at once prints only its error).
func printProgress(cmd *cobra.Command, header string) func(api.Event) {
	first := true
	return func(ev api.Event) {
		if first {
			fmt.Fprintln(cmd.OutOrStdout(), header)
			first = false
		}
		fmt.Fprintf(cmd.OutOrStdout(), "  [%5.1fs] %-8s %s\n", ev.Elapsed, ev.Step, ev.Message)
	}
}

func newCreateCmd() *cobra.Command {
	var req api.CreateVMRequest
	var disk string
	var noGit bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create and boot a VM (random name unless --name)",
		Long: `Create a microVM, boot it and wait until it answers SSH.

The VM gets a random name like cosmic-nova unless --name gives one (a DNS label:
lowercase letters, digits, inner hyphens). create writes the name to ./.fcm, so
later commands in this directory (start, stop, destroy) need no name, and makes
the directory ready for git push: a git repository (git init, unless it is one
already) with the remote "fcm" pointing at the VM, fcm being the remote's
credential helper. Then: git push fcm main.`,
		Example: `  fcm create
  fcm create --name api --cpus 2 --memory 2048 --disk 10G`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if disk != "" {
				n, err := parseSize(disk)
				if err != nil {
					return usageError{cmd: "create", err: err}
				}
				req.DiskBytes = n
			}
			if req.SuspendAfter != "" {
				if _, err := api.ParseSuspendAfter(req.SuspendAfter); err != nil {
					return usageError{cmd: "create", err: err}
				}
			}
			c := client.FromEnv()
			v, err := c.CreateVM(cmd.Context(), req, printProgress(cmd, "Creating VM..."))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM created: %s\n  IP:  %s\n  URL: %s\n", v.Name, v.IP, urlNote(*v))
			if v.SuspendAfter != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "  Sleeps after %s idle; the first request wakes it (fcm update --suspend-after)\n", v.SuspendAfter)
			}
			if err := os.WriteFile(dotFile, []byte(v.Name+"\n"), 0o644); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: could not write %s: %v\n", dotFile, err)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s: commands in this directory now default to %s.\n", dotFile, v.Name)
			}
			if !noGit {
				setUpGit(cmd, v.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "VM name (default: random adjective-noun)")
	f.IntVar(&req.CPUs, "cpus", api.DefaultCPUs, "vCPUs")
	f.IntVar(&req.MemoryMiB, "memory", api.DefaultMemoryMiB, "memory in MiB")
	f.StringVar(&disk, "disk", "2G", "root disk size")
	f.IntVar(&req.Port, "port", api.DefaultPort, "port the app listens on in the VM (served at https://<name>.<domain>)")
	f.BoolVar(&req.NoExpose, "no-expose", false, "no public URL: the VM is reached only from this host")
	f.StringVar(&req.SuspendAfter, "suspend-after", "", "suspend the VM after it sits idle this long (30s, 5m, 1h; no request through its URL, no console attached, no command or deploy running), waking it on the next; off: never (default: the daemon's --suspend-after, off with --no-expose)")
	f.BoolVar(&noGit, "no-git", false, "do not make a git repository or add the remote fcm here")
	return cmd
}

// urlNote is a VM's URL with what a person needs to know about it.
func urlNote(v api.VM) string {
	switch {
	case v.URL == "":
		return "none (--no-expose)"
	case v.Route == "applied":
		return v.URL + " (route applied; the first request may wait a moment for the certificate)"
	case v.Route == "pending":
		return v.URL + " (route pending: Caddy has not taken it yet; the daemon keeps trying, see its log)"
	}
	return v.URL
}

func newLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Long: `List your VMs (the admin: all) with their state and, when the daemon says,
why: "restarting (its hypervisor (qemu) killed by signal 9 ...; restart in 2s
(1 of 5 deaths in 10 min))", "starting (after host restart)", "crashed 5 times
in 10 min: out of memory ...", "paused (host disk full)", "stopped (the guest
powered itself off)". --json adds the desired state (what fcm start or fcm
stop last asked for) and the last events (died, restarted, crashed,
poweroff, reboot, host-restart, paused, resumed).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			vms, err := client.FromEnv().ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(cmd, vms)
			}
			if len(vms) == 0 {
				fmt.Fprintln(out, "No VMs. Create one with: fcm create")
				return nil
			}
			// The daemon tells owners to the admin only: a column then.
			owners := slices.ContainsFunc(vms, func(v api.VM) bool { return v.Owner != "" })
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			if owners {
				fmt.Fprint(tw, "NAME\tOWNER\t")
			} else {
				fmt.Fprint(tw, "NAME\t")
			}
			fmt.Fprintln(tw, "STATE\tIP\tCPUS\tMEMORY\tDISK\tURL\tCREATED")
			for _, v := range vms {
				if owners {
					fmt.Fprintf(tw, "%s\t%s\t", v.Name, dash(v.Owner))
				} else {
					fmt.Fprintf(tw, "%s\t", v.Name)
				}
				state := stateText(v)
				url := v.URL
				switch {
				case url == "":
					url = "-"
				case v.Route == "pending":
					url += " (route pending)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d MiB\t%d GiB\t%s\t%s\n", state, v.IP, v.CPUs,
					v.MemoryMiB, v.DiskBytes>>30, url, ago(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func newStartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "start [vm]",
		Short: "Boot a stopped VM (default: the one in ./.fcm)",
		Long: `Boot a stopped, crashed or restarting VM and wait until it answers SSH.

The VM's desired state becomes running: from now on the daemon boots it again
by itself when its hypervisor dies or the host restarts (after 1 s, doubling
each death), until it dies 5 times in 10 minutes and stays down as crashed.
fcm start on a crashed VM tries again with a fresh count.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			v, err := client.FromEnv().StartVM(cmd.Context(), name, printProgress(cmd, "Starting "+name+"..."))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is running at %s\n", v.Name, v.IP)
			return nil
		},
	}
}

func newStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop [vm]",
		Short: "Power a VM off gracefully; its disk and address stay",
		Long: `Power a VM off gracefully (Ctrl-Alt-Del; killed after the stop timeout);
its disk and address stay.

The VM's desired state becomes stopped: the daemon does not boot it again,
after a host restart either, until fcm start. A guest that runs poweroff
itself is stopped the same way.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			v, err := client.FromEnv().StopVM(cmd.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is %s\n", v.Name, v.State)
			return nil
		},
	}
}

func newDestroyCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:     "destroy [vm]",
		Aliases: []string{"rm"},
		Short:   "Delete a VM and its disk",
		Long: `Delete a VM, its disk and its address.

Without a name, the VM named in ./.fcm is the target: fcm asks before
destroying it (a cloned repository's .fcm could name someone else's VM), and
without a terminal to ask on it refuses unless --yes is given.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			if len(args) == 0 && !yes {
				if err := confirm(cmd, name); err != nil {
					return err
				}
			}
			if err := client.FromEnv().DestroyVM(cmd.Context(), name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Destroyed %s\n", name)
			if data, err := os.ReadFile(dotFile); err == nil && strings.TrimSpace(string(data)) == name {
				os.Remove(dotFile)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "destroy the VM named in ./.fcm without asking")
	return cmd
}

// isTerminal reports whether r is a terminal a person answers on.
var isTerminal = func(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// errNotConfirmed ends a destroy the person said no to.
var errNotConfirmed = errors.New("not destroyed")

// confirm asks whether to destroy name, which ./.fcm chose; with no terminal
// to ask on, it refuses.
func confirm(cmd *cobra.Command, name string) error {
	in := cmd.InOrStdin()
	if !isTerminal(in) {
		return usageError{cmd: "destroy", err: fmt.Errorf("./%s names %s: to destroy it without a terminal to confirm on, run fcm destroy %s or fcm destroy --yes", dotFile, name, name)}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Destroy %s (named in ./%s) and its disk? [y/N] ", name, dotFile)
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errNotConfirmed
}

// stateText is a VM's state as ls shows it: with why, when the daemon says
// ("starting (after host restart)", "crashed 5 times in 10 min: out of
// memory").
func stateText(v api.VM) string {
	s := v.State
	switch {
	case v.Reason != "" && strings.HasPrefix(v.Reason, v.State):
		s = v.Reason
	case v.Reason != "":
		s += " (" + v.Reason + ")"
	case v.State == api.StateSuspended && v.SuspendedAt != nil:
		s += " " + ago(*v.SuspendedAt)
	}
	return s
}
