package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newEventsCmd() *cobra.Command {
	var asJSON, follow bool
	var since time.Duration
	cmd := &cobra.Command{
		Use:   "events [vm]",
		Short: "Show the audit trail: who changed what, when, from where, and how it went",
		Long: `Show the audit trail, oldest first: every change anyone made (create, start,
stop, destroy, suspend, resume, update, rollback, config set/unset with names
only, restart, checkpoint, restore, fork, key add/rm, token revoke, users
allow/deny/rm, logout), with who (an email, or admin), from which address,
and the result. You see the events of your VMs and your own; the admin sees
all. With a VM's name, only its events. --follow waits for new ones.`,
		Example: `  fcm events --since 1h
  fcm events web --follow`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			vm := ""
			if len(args) == 1 {
				vm = args[0]
			}
			c := client.FromEnv()
			evs, err := c.Events(cmd.Context(), vm, since, 0)
			if err != nil {
				return err
			}
			show := func(evs []api.AuditEvent) {
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					for _, e := range evs {
						enc.Encode(e)
					}
					return
				}
				printEvents(cmd.OutOrStdout(), evs)
			}
			show(evs)
			if !follow {
				return nil
			}
			var last uint64
			if len(evs) > 0 {
				last = evs[len(evs)-1].Seq
			} else if since > 0 {
				// --since hid the older ones: follow from the newest there is.
				if all, err := c.Events(cmd.Context(), vm, 0, 0); err == nil && len(all) > 0 {
					last = all[len(all)-1].Seq
				}
			}
			for {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(500 * time.Millisecond):
				}
				evs, err := c.Events(cmd.Context(), vm, 0, last)
				if err != nil {
					return err
				}
				if len(evs) > 0 {
					show(evs)
					last = evs[len(evs)-1].Seq
				}
			}
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON, one event a line")
	f.BoolVarP(&follow, "follow", "f", false, "wait for new events and print them as they come")
	f.DurationVar(&since, "since", 0, "only the events of this long ago and later (10m, 1h, 48h)")
	return cmd
}

// printEvents writes events as a table.
func printEvents(out io.Writer, evs []api.AuditEvent) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, e := range evs {
		what := e.Action
		if e.Detail != "" {
			what += " (" + e.Detail + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05"), e.Who, e.From, e.VM, what, e.Result)
	}
	w.Flush()
}
