package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newDomainsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "domains [vm]",
		Short: "List, add and remove a VM's own domains",
		Long: `A VM is served at https://<vm>.<domain>, and also at each of its own domains:
fcm domains add app.example.org makes Caddy serve the VM's app at
https://app.example.org, with a certificate of its own (from the same CA as the
rest, issued on the first request once the name points at this host).

Point the name at this host with an A (or AAAA) record for the host's address,
or a CNAME to <vm>.<domain>: add says which, and whether DNS already does.
A domain is one VM's: another VM on the host cannot take it. It goes when the
VM is destroyed, and like every route it survives Caddy and daemon restarts.

Without a subcommand: the VM's domains, with what DNS says of each now.`,
		Example: `  fcm domains add app.example.org
  fcm domains
  fcm domains rm app.example.org`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			ds, err := client.FromEnv().Domains(cmd.Context(), name)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(ds)
			}
			if len(ds) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s has no domains of its own: fcm domains add %s <domain> adds one\n", name, name)
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "DOMAIN\tROUTE\tDNS")
			for _, d := range ds {
				fmt.Fprintf(w, "%s\t%s\t%s\n", d.URL, d.Route, d.DNS.Message)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newDomainsAddCmd(), newDomainsRmCmd())
	return cmd
}

func newDomainsAddCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "add [vm] <domain>",
		Short: "Serve a VM at a domain of yours, with its own certificate",
		Long: `Serve the VM at https://<domain> too, with a certificate of its own. The
domain is added even when DNS does not point it at this host yet: add says
what record to create, and the certificate is issued on the first request
after it does.`,
		Example: `  fcm domains add app.example.org
  fcm domains add web www.example.org`,
		Args: vmThen("domains add", "a domain (app.example.org)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args[:len(args)-1])
			if err != nil {
				return err
			}
			d, err := client.FromEnv().AddDomain(cmd.Context(), name, args[len(args)-1])
			if err != nil {
				return err
			}
			printDomainAdded(cmd, name, d)
			return nil
		},
	}
}

func printDomainAdded(cmd *cobra.Command, vm string, d *api.Domain) {
	out := cmd.OutOrStdout()
	route := "route applied"
	if d.Route != "applied" {
		route = "route pending: fcm keeps trying Caddy"
	}
	fmt.Fprintf(out, "%s is served at %s (%s)\n", vm, d.URL, route)
	if d.DNS.Points {
		fmt.Fprintf(out, "DNS: %s; its certificate is issued on the first request\n", d.DNS.Message)
	} else {
		fmt.Fprintf(out, "DNS: %s\n", d.DNS.Message)
	}
}

func newDomainsRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm [vm] <domain>",
		Short:   "Stop serving a VM at one of its domains",
		Example: `  fcm domains rm app.example.org`,
		Args:    vmThen("domains rm", "a domain (app.example.org)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := args[len(args)-1]
			name, err := target(cmd, args[:len(args)-1])
			if err != nil {
				return err
			}
			if err := client.FromEnv().RemoveDomain(cmd.Context(), name, d); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is no longer served at https://%s\n", name, d)
			return nil
		},
	}
}

// vmThen takes one argument, what, after an optional VM name (which the
// directory's .fcm gives when it is left out).
func vmThen(cmdName, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < 1 || len(args) > 2 {
			return usageError{cmd: cmdName, err: fmt.Errorf("want %s, after the vm's name or alone", what)}
		}
		return nil
	}
}
