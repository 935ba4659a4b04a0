package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

// appFlag adds -a/--app, the VM a command acts on when it takes other
// arguments (default: the one in ./.fcm).
func appFlag(cmd *cobra.Command) *string {
	return cmd.Flags().StringP("app", "a", "", "the app's VM (default: the one named in ./.fcm)")
}

func appName(cmd *cobra.Command, app string) (string, error) {
	if app != "" {
		return app, nil
	}
	return target(cmd, nil)
}

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newReleasesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "releases [vm]",
		Short: "List an app's releases: deploys, config changes, rollbacks",
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			rels, err := client.FromEnv().Releases(cmd.Context(), name)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, rels)
			}
			if len(rels) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s has no releases. Deploy with: git push fcm main\n", name)
				return nil
			}
			cur := "none"
			for _, r := range rels {
				if r.Current {
					cur = fmt.Sprintf("v%d", r.Version)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "=== %s Releases - Current: %s\n", name, cur)
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, r := range rels {
				status := r.Status
				if r.Reason != "" {
					status += ": " + r.Reason
				}
				fmt.Fprintf(tw, "v%d\t%s\t%s\t%s\t%s\n", r.Version, r.Description, r.User, ago(r.CreatedAt), status)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var app *string
	output := &cobra.Command{
		Use:     "output [vN] [-a vm]",
		Short:   "Print what a release printed: its build, release command and switch (default: the newest)",
		Example: "  fcm releases output\n  fcm releases output v3 -a cosmic-nova",
		Args:    maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := appName(cmd, *app)
			if err != nil {
				return err
			}
			c := client.FromEnv()
			version := 0
			if len(args) == 1 {
				if version, err = strconv.Atoi(strings.TrimPrefix(args[0], "v")); err != nil || version <= 0 {
					return usageError{cmd: "releases output", err: fmt.Errorf("%q is not a release (want e.g. v3)", args[0])}
				}
			} else {
				rels, err := c.Releases(cmd.Context(), name)
				if err != nil {
					return err
				}
				if len(rels) == 0 {
					return fmt.Errorf("%s has no releases yet", name)
				}
				version = rels[0].Version
			}
			out, err := c.ReleaseOutput(cmd.Context(), name, version)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	app = appFlag(output)
	cmd.AddCommand(output)
	return cmd
}

func newRollbackCmd() *cobra.Command {
	var app *string
	cmd := &cobra.Command{
		Use:   "rollback [vN]",
		Short: "Run an earlier release again (default: the one before the current), with its config vars",
		Long: `Make a new release that runs an earlier release's build with that release's
config vars, without rebuilding. Without a version, the release before the
current one. App data is not rolled back.`,
		Example: "  fcm rollback\n  fcm rollback v3 -a cosmic-nova",
		Args:    maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := appName(cmd, *app)
			if err != nil {
				return err
			}
			version := 0
			if len(args) == 1 {
				if version, err = strconv.Atoi(strings.TrimPrefix(args[0], "v")); err != nil || version <= 0 {
					return usageError{cmd: "rollback", err: fmt.Errorf("%q is not a release (want e.g. v3)", args[0])}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Rolling back %s... ", name)
			rel, err := client.FromEnv().Rollback(cmd.Context(), name, version)
			if err != nil {
				fmt.Fprintln(cmd.OutOrStdout(), "failed")
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "done, v%d (%s)\nRollback affects code and config vars; app data is not rolled back.\nTo undo, run: fcm rollback v%d -a %s\n",
				rel.Version, rel.Description, rel.Version-1, name)
			return nil
		},
	}
	app = appFlag(cmd)
	return cmd
}

func newConfigCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "config [vm]",
		Short: "Show an app's config vars; 'config set' and 'config unset' change them",
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			vars, err := client.FromEnv().Config(cmd.Context(), name)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd, vars)
			}
			keys := make([]string, 0, len(vars))
			for k := range vars {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			fmt.Fprintf(cmd.OutOrStdout(), "=== %s Config Vars\n", name)
			for _, k := range keys {
				fmt.Fprintf(cmd.OutOrStdout(), "%s=%s\n", k, vars[k])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var setApp, unsetApp *string
	set := &cobra.Command{
		Use:     "set KEY=VALUE...",
		Short:   "Set config vars: a new release, processes restarted with them",
		Example: "  fcm config set GREETING=hello DEBUG=1",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			change := api.ConfigChange{Set: map[string]string{}}
			for _, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return usageError{cmd: "config set", err: fmt.Errorf("%s is invalid: write KEY=value", a)}
				}
				change.Set[k] = v
			}
			return changeConfig(cmd, *setApp, change, "Setting")
		},
	}
	setApp = appFlag(set)
	unset := &cobra.Command{
		Use:   "unset KEY...",
		Short: "Remove config vars: a new release, processes restarted without them",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeConfig(cmd, *unsetApp, api.ConfigChange{Unset: args}, "Unsetting")
		},
	}
	unsetApp = appFlag(unset)
	cmd.AddCommand(set, unset)
	return cmd
}

func changeConfig(cmd *cobra.Command, app string, change api.ConfigChange, verb string) error {
	name, err := appName(cmd, app)
	if err != nil {
		return err
	}
	var keys []string
	for k := range change.Set {
		keys = append(keys, k)
	}
	keys = append(keys, change.Unset...)
	sort.Strings(keys)
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s and restarting %s... ", verb, strings.Join(keys, ", "), name)
	cfg, err := client.FromEnv().ChangeConfig(cmd.Context(), name, change)
	if err != nil {
		fmt.Fprintln(cmd.OutOrStdout(), "failed")
		return err
	}
	if cfg.Release != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "done, v%d\n", cfg.Release.Version)
	} else {
		fmt.Fprintln(cmd.OutOrStdout(), "done (no release yet: they apply from the first deploy)")
	}
	return nil
}

func newLogsCmd() *cobra.Command {
	var follow bool
	var lines int
	cmd := &cobra.Command{
		Use:     "logs [vm]",
		Short:   "Show an app's log: every process's output and fcm's own lines",
		Example: "  fcm logs\n  fcm logs -f\n  fcm logs cosmic-nova -n 500",
		Args:    maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			if err := awake(cmd, name); err != nil {
				return err
			}
			return client.FromEnv().Logs(cmd.Context(), name, lines, follow, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVarP(&follow, "tail", "f", false, "keep printing new lines (Ctrl+C to stop)")
	cmd.Flags().IntVarP(&lines, "num", "n", 100, "how many of the last lines to print first")
	return cmd
}

func newPsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps [vm]",
		Short: "List an app's processes: state, restarts, since when",
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			if err := awake(cmd, name); err != nil {
				return err
			}
			procs, err := client.FromEnv().Processes(cmd.Context(), name)
			if err != nil {
				return err
			}
			return printProcs(cmd, name, procs, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printProcs(cmd *cobra.Command, name string, procs []api.Process, asJSON bool) error {
	if asJSON {
		return printJSON(cmd, procs)
	}
	if len(procs) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "%s runs no processes. Deploy with: git push fcm main\n", name)
		return nil
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tRELEASE\tSTATE\tRESTARTS\tSINCE\tCOMMAND")
	for _, p := range procs {
		fmt.Fprintf(tw, "%s.1\tv%d\t%s\t%d\t%s\t%s\n", p.Type, p.Release, p.State, p.Restarts, ago(p.Since), p.Command)
	}
	return tw.Flush()
}

func newRestartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restart [vm]",
		Short: "Restart an app's processes without downtime (new ones start before the old stop)",
		Args:  maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			if err := awake(cmd, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Restarting %s... ", name)
			procs, err := client.FromEnv().Restart(cmd.Context(), name)
			if err != nil {
				fmt.Fprintln(cmd.OutOrStdout(), "failed")
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "done")
			return printProcs(cmd, name, procs, false)
		},
	}
}

func newRunCmd() *cobra.Command {
	var app *string
	cmd := &cobra.Command{
		Use:     "run [-a vm] -- COMMAND [ARG...]",
		Short:   "Run a one-off command in the app's current release (its directory and config vars)",
		Example: "  fcm run -- python3 manage.py migrate\n  fcm run -a cosmic-nova -- sh -c 'echo $PORT'",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := appName(cmd, *app)
			if err != nil {
				return err
			}
			if err := awake(cmd, name); err != nil {
				return err
			}
			code, err := client.FromEnv().Run(cmd.Context(), name, args, os.Stdout)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	app = appFlag(cmd)
	return cmd
}

// awake wakes VM name first when it is suspended, saying so on stderr
// ("Waking cosmic-nova... 41ms"): commands that reach into a VM need it
// running.
func awake(cmd *cobra.Command, name string) error {
	c := client.FromEnv()
	v, err := c.GetVM(cmd.Context(), name)
	if err != nil || v.State != api.StateSuspended {
		return nil // the command itself says what is wrong
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Waking %s... ", name)
	t := time.Now()
	if _, err := c.ResumeVM(cmd.Context(), name); err != nil {
		fmt.Fprintln(cmd.ErrOrStderr())
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s\n", time.Since(t).Round(time.Millisecond))
	return nil
}
