package cli

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/spf13/cobra"
)

func newDaemonCmd() *cobra.Command {
	o := daemon.Options{}
	var maxDisk string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the fcm daemon (root): the API, VMs, bridge and NAT",
		Long: `Run the daemon that owns this host's VMs. It needs root.

On first run it makes the data dir, an admin token (<data-dir>/.token, 0600) and
an SSH key for reaching guests, sets up the bridge, taps and an nftables table
"fcm" (NAT for the VMs; guests cannot reach the host's API, SSH or Caddy admin),
and serves the API. Stopping the daemon leaves VMs running; the next start
re-adopts them and finishes or undoes whatever a crash interrupted.

With Caddy running beside it (admin API on loopback), every VM is served at
https://<name>.<domain> with an automatic certificate and the API at
https://fcm.<domain>; fcm configures Caddy through its admin API and re-applies
the routes whenever Caddy restarts.

Create admits a VM only when the host has room for it: its disk plus a 2 GiB
reserve free on the data dir's filesystem, and its memory, with that of every
VM that is not stopped, within the host's memory less a 1 GiB reserve. Each VM
is also held to --max-cpus, --max-memory and --max-disk.

The guest image must exist first: sudo fcm image build.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(maxDisk)
			if err != nil || n < 1<<30 {
				return fmt.Errorf("--max-disk %q: want a size of at least 1G, like 64G", maxDisk)
			}
			o.MaxDiskBytes = n
			o.Version = Version
			o.Out = cmd.OutOrStdout()
			o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return daemon.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data-dir", image.DefaultOutDir, "state, VM disks, image, token")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:7777", "address of the HTTP API")
	f.StringVar(&o.Hypervisor, "hypervisor", "auto", "auto, firecracker or qemu")
	f.StringVar(&o.GitListen, "git-listen", ":2222", "address of git over SSH (ssh://git@<host>:2222/<app>.git); off: none")
	f.StringVar(&o.Bridge, "bridge", "fcm0", "bridge the VMs' taps join")
	f.StringVar(&o.Subnet, "subnet", "172.16.0.0/24", "VM subnet; the bridge takes its first address, VMs get .50 and up")
	f.StringVar(&o.Kernel, "kernel", "", "guest kernel (default <data-dir>/vmlinux.bin)")
	f.StringVar(&o.Initrd, "initrd", "", "guest initrd (default <data-dir>/initrd.img)")
	f.StringVar(&o.Rootfs, "rootfs", "", "base root filesystem (default <data-dir>/base-rootfs.img)")
	f.StringVar(&o.Edge.Domain, "domain", "", "VMs are served at https://<name>.<domain>, the API at https://fcm.<domain> (default <host-ip-with-dashes>.sslip.io)")
	f.StringVar(&o.Edge.CaddyAdmin, "caddy-admin", "http://127.0.0.1:2019", "Caddy's admin API; off: no edge, VMs only at http://<ip>:<port>")
	f.StringVar(&o.Edge.TLS, "tls", "acme", "acme: certificates from --acme-ca; internal: Caddy's own CA (a LAN)")
	f.StringVar(&o.Edge.ACMECA, "acme-ca", "", "ACME directory URL (default Let's Encrypt)")
	f.StringVar(&o.Edge.ACMEEmail, "acme-email", "", "ACME account email")
	f.StringVar(&o.Edge.ACMECARoot, "acme-ca-root", "", "PEM file of an extra root to trust for the ACME CA's HTTPS (a private CA)")
	f.IntVar(&o.MaxCPUs, "max-cpus", vm.DefaultMaxCPUs, "most vCPUs one VM may have; create refuses more")
	f.IntVar(&o.MaxMemoryMiB, "max-memory", vm.DefaultMaxMemoryMiB, "most memory in MiB one VM may have; create refuses more")
	f.StringVar(&maxDisk, "max-disk", "64G", "largest root disk one VM may have; create refuses more")
	return cmd
}
