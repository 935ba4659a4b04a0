package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/spf13/cobra"
)

func newStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats [vm]",
		Short: "Show what a VM uses: CPU, memory, disk, network, uptime",
		Long: `Show what a VM uses now: CPU over the last second (100% is one vCPU busy),
the host memory its hypervisor holds (guest memory it has touched, of what it
was given), its own disk's blocks on the host (of its size), what it received
and sent since it booted, and how long it has run. --json adds its last hour,
a point every 10 s, as the status page charts it.`,
		Args: maxOneArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := target(cmd, args)
			if err != nil {
				return err
			}
			st, err := client.FromEnv().Stats(cmd.Context(), name)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprint(cmd.OutOrStdout(), statsText(*st))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, with the last hour")
	return cmd
}

// statsText is fcm stats' table.
func statsText(st api.VMStats) string {
	head := st.Name + "  " + st.State
	if st.Uptime > 0 {
		head += ", up " + (time.Duration(st.Uptime) * time.Second).String()
	}
	s := head + "\n"
	if st.State == api.StateRunning {
		s += fmt.Sprintf("  CPU      %.0f%% (of %d vCPU: %d%% is all busy)\n", st.CPUPercent, st.CPUs, 100*st.CPUs)
		s += fmt.Sprintf("  Memory   %s of %s\n", humanBytes(st.MemoryBytes), humanBytes(st.MemorySizeBytes))
		s += fmt.Sprintf("  Network  in %s, out %s\n", humanBytes(st.NetworkIn), humanBytes(st.NetworkOut))
	}
	s += fmt.Sprintf("  Disk     %s of %s\n", humanBytes(st.DiskBytes), humanBytes(st.DiskSizeBytes))
	return s
}
