//go:build linux

package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmstore"
	"github.com/spf13/cobra"
)

func newDaemonCmd() *cobra.Command {
	o := daemon.Options{}
	var maxDisk, diskReserve, maxBuildOutput, maxPush, maxRepos string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the fcm daemon (root): the API, VMs, bridge and NAT",
		Long: `Run the daemon that owns this host's VMs. It needs root.

On first run it makes the data dir, an admin token (<data-dir>/.token, 0600) and
an SSH key for reaching guests, sets up the bridge, taps and the nftables tables
"fcm" and "fcm-l2", and serves the API. Stopping the daemon leaves VMs running;
the next start re-adopts them and finishes or undoes whatever a crash interrupted.

Guests are isolated: each VM sends only from its own MAC and IPv4 address (no
IPv6), cannot talk to other VMs directly (--guest-to-guest allows it), reaches
the host only on TCP 80/443 of its routable addresses (Caddy, for the VMs'
public URLs; not on a loopback or link-local address of the host) and by ping, and
reaches the internet but not link-local (cloud metadata), private, CGNAT or
multicast ranges nor the host's own networks (--allow-egress CIDR opens one).
IPv4 forwarding is turned on for the bridge and the interfaces guest traffic
leaves by (read at start: restart the daemon when the host's uplink changes),
never with the global net.ipv4.ip_forward.

With Caddy running beside it, every VM is served at https://<name>.<domain>
with an automatic certificate and the API at https://fcm.<domain>; fcm
configures Caddy through its admin API and re-applies the routes whenever Caddy
restarts. Give Caddy its admin API on a unix socket only root may open
(Caddyfile: admin unix//run/caddy/admin.sock|0600): on TCP any local user can
rewrite the routes.

The admin token in <data-dir>/.token is the one admin token: at each start any
other is revoked. The file must be 0600 and hold a token fcm made. Replace it
with --rotate-admin-token (or, against a running daemon, fcm token rotate).
Every request is logged with its remote address, the client Caddy forwarded
for, and the token's id and fingerprint (never the token).

Create admits a VM only when the host has room for it: its disk and swap, with
what every VM (running or stopped) was promised and has not used yet, within
the free space on the data dir's filesystem less --disk-reserve (2G), times
--disk-overcommit (1: never promise more than is free); and its memory, with
that of every VM that is not stopped, within the host's memory less a 1 GiB
reserve. Each VM is also held to --max-cpus, --max-memory and --max-disk. Below
--disk-reserve free, creates and git pushes are refused (507). A VM whose disk
write fails because the host's disk is full is paused by QEMU: it shows as
paused (host disk full) and the daemon resumes it once more than --disk-reserve
is free again.

People log in with OIDC (Google by default) once the daemon has a client:
--oidc-client-id and --oidc-client-secret, or GOOGLE_CLIENT_ID and
GOOGLE_CLIENT_SECRET in its environment (a secret in the environment stays out
of ps). Register the redirect URL https://fcm.<domain>/oauth2/callback with
the provider. --oidc-issuer picks another OpenID provider. Nobody may log in
until allowed: --allow alice@example.com,@example.com (fixed while the daemon
runs), or at run time fcm users allow. Each user sees only their own VMs,
sessions, apps, logs and keys. A user may have --max-vms-per-user VMs (10),
with --max-memory-per-user MiB (16384) and --max-cpus-per-user vCPUs (16) in
all, counting every VM they own whether running or stopped; a create beyond
is refused (403 quota_exceeded) saying what they have and what is allowed. The
admin token has no quota.

The guest image must exist first: sudo fcm image build.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(maxDisk)
			if err != nil || n < 1<<30 {
				return fmt.Errorf("--max-disk %q: want a size of at least 1G, like 64G", maxDisk)
			}
			o.MaxDiskBytes = n
			if o.DiskReserve, err = parseSize(diskReserve); err != nil || o.DiskReserve < 64<<20 {
				return fmt.Errorf("--disk-reserve %q: want a size of at least 64M, like 2G", diskReserve)
			}
			if !(o.DiskOvercommit > 0 && o.DiskOvercommit <= 100) {
				return fmt.Errorf("--disk-overcommit %g: want a ratio above 0 and at most 100, like 1 (never promise more than is free) or 2", o.DiskOvercommit)
			}
			if o.MaxBuildOutput, err = parseSize(maxBuildOutput); err != nil || o.MaxBuildOutput < 1<<20 {
				return fmt.Errorf("--max-build-output %q: want a size of at least 1M, like 256M", maxBuildOutput)
			}
			if o.Git.MaxPushBytes, err = parseSize(maxPush); err != nil || o.Git.MaxPushBytes < 1<<20 {
				return fmt.Errorf("--max-push-size %q: want a size of at least 1M, like 1G", maxPush)
			}
			if o.Git.MaxRepoBytesPerUser, err = parseSize(maxRepos); err != nil || o.Git.MaxRepoBytesPerUser < 0 {
				return fmt.Errorf("--max-repo-size-per-user %q: want a size like 5G, or 0 for no limit", maxRepos)
			}
			o.Version = Version
			if o.Login.ClientID == "" {
				o.Login.ClientID = os.Getenv("GOOGLE_CLIENT_ID")
			}
			if o.Login.ClientSecret == "" {
				o.Login.ClientSecret = os.Getenv("GOOGLE_CLIENT_SECRET")
			}
			if !cmd.Flags().Changed("caddy-admin") {
				o.Edge.CaddyAdmin = edge.DefaultAdmin()
			}
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
	f.StringArrayVar(&o.AllowEgress, "allow-egress", nil, "CIDR guests may reach although it is blocked by default (link-local such as 169.254.169.254, private, CGNAT, multicast and the host's own networks); repeat for more, e.g. --allow-egress 10.1.2.0/24")
	f.BoolVar(&o.GuestToGuest, "guest-to-guest", false, "let VMs talk to each other directly on the bridge (by default they reach each other only through their public URLs)")
	f.StringVar(&o.Kernel, "kernel", "", "guest kernel (default <data-dir>/vmlinux.bin)")
	f.StringVar(&o.Initrd, "initrd", "", "guest initrd (default <data-dir>/initrd.img)")
	f.StringVar(&o.Rootfs, "rootfs", "", "base root filesystem (default <data-dir>/base-rootfs.img)")
	f.StringVar(&o.Edge.Domain, "domain", "", "VMs are served at https://<name>.<domain>, the API at https://fcm.<domain> (default <host-ip-with-dashes>.sslip.io)")
	f.StringVar(&o.Edge.CaddyAdmin, "caddy-admin", "", "Caddy's admin API: a URL, or a unix socket as Caddy writes it (unix//run/caddy/admin.sock); off: no edge, VMs only at http://<ip>:<port> (default unix/"+edge.DefaultAdminSocket+" when that socket exists, else "+edge.DefaultAdminTCP+")")
	f.StringVar(&o.Edge.TLS, "tls", "acme", "acme: certificates from --acme-ca; internal: Caddy's own CA (a LAN)")
	f.StringVar(&o.Edge.ACMECA, "acme-ca", "", "ACME directory URL (default Let's Encrypt)")
	f.StringVar(&o.Edge.ACMEEmail, "acme-email", "", "ACME account email")
	f.StringVar(&o.Edge.ACMECARoot, "acme-ca-root", "", "PEM file of an extra root to trust for the ACME CA's HTTPS (a private CA)")
	f.BoolVar(&o.RotateAdminToken, "rotate-admin-token", false, "make a new admin token in <data-dir>/.token at start; the old one stops working (a running daemon: fcm token rotate)")
	f.IntVar(&o.MaxCPUs, "max-cpus", vm.DefaultMaxCPUs, "most vCPUs one VM may have; create refuses more")
	f.IntVar(&o.MaxMemoryMiB, "max-memory", vm.DefaultMaxMemoryMiB, "most memory in MiB one VM may have; create refuses more")
	f.IntVar(&o.MemoryReserveMiB, "memory-reserve", vm.DefaultMemoryReserveMiB, "memory in MiB kept for the host: creates and starts are refused when the VMs that hold memory would have more than the rest (with --suspend on, idle VMs that may sleep are suspended first, least recently used first)")
	f.StringVar(&maxDisk, "max-disk", "64G", "largest root disk one VM may have; create refuses more")
	f.StringVar(&diskReserve, "disk-reserve", "2G", "free space kept on the data dir's filesystem for the store, repositories and logs: creates and pushes are refused below it, and VMs paused on a full disk resume above it")
	f.Float64Var(&o.DiskOvercommit, "disk-overcommit", vm.DefaultDiskOvercommit, "how many times the free space (less --disk-reserve) the VMs' disks may be promised: 1 never promises more than is free; more admits more VMs at the risk of a full disk, where VMs that write are paused until space is freed")
	f.DurationVar(&o.BuildTimeout, "build-timeout", deploy.DefaultBuildTimeout, "how long one release of an app (build, release command, switch) may take before it is stopped and fails")
	f.StringVar(&maxBuildOutput, "max-build-output", "256M", "the most one release of an app may print (build, release command): past it the release is stopped and fails; the host keeps the first 4 MiB of each")
	o.Suspend = true
	f.Var(onOff{&o.Suspend}, "suspend", "on: VMs can be suspended to disk (fcm suspend, and by themselves when idle: --suspend-after) and are woken by a request to their URL, a command or fcm resume; with QEMU their RAM is then a file in their directory, allocated whole at boot (sparse with --disk-overcommit above 1) and counted in the disk admission, which the host writes back to as the guest changes it; off: guest RAM anonymous, no suspend")
	f.StringVar(&o.Resolver, "resolver", "", "DNS server (host:port) fcm domains asks whether a custom domain points at this host yet; default: the system's")
	f.StringVar(&o.MetricsListen, "metrics-listen", "off", "address to serve Prometheus metrics at /metrics on (e.g. 127.0.0.1:9477), a listener of its own without a token: keep it on loopback or a network only the scraper reaches; off: none")
	o.Store = vmstore.ModeAuto
	f.Var(storeFlag{&o.Store}, "store", "where VM disks and checkpoints live: dir: in the data dir; xfs-loop: in an XFS filesystem in a sparse loop file in the data dir (<data-dir>/store.xfs, mounted at <data-dir>/store), where copies share blocks; auto: dir where the data dir's filesystem can share blocks between files (XFS, btrfs), else xfs-loop (ext4). Checkpoints and forks take milliseconds and almost no disk where blocks are shared; elsewhere they copy the disk. VMs made before keep working where they are")
	f.IntVar(&o.KeepCheckpoints, "keep-checkpoints", vm.DefaultKeepCheckpoints, "how many checkpoints each VM keeps: a new one beyond it removes the oldest")
	f.IntVar(&o.Standbys, "standbys", vm.DefaultStandbys, "with --suspend on: how many of the last suspended VMs keep a hypervisor started and waiting for their wake (no guest memory of its own), so that their wake skips its start; 0: none")
	o.SuspendAfter = DefaultSuspendAfter
	f.Var(suspendAfterFlag{&o.SuspendAfter}, "suspend-after", "with --suspend on: how long a new VM with a public URL may sit idle (no request through its URL, no console attached, no command or deploy running) before it is suspended, unless fcm create --suspend-after says otherwise; off: never by itself (VMs created with --no-expose never are unless asked)")
	f.IntVar(&o.BootConcurrency, "boot-concurrency", vm.DefaultBootConcurrency(), "how many VMs the daemon boots at once by itself: VMs that should run after a host restart, and VMs restarted after their hypervisor died (each also needs its memory free)")
	f.DurationVar(&o.NameHold, "name-hold", store.TombstoneAge, "how long a destroyed VM's name (and its URL) stays its last owner's: links to it may still be out there; 0 frees names at once")
	f.DurationVar(&o.BootTimeout, "boot-timeout", 2*time.Minute, "how long create and start wait for a VM to boot and answer on SSH before giving up (and undoing a create)")
	f.StringVar(&o.Login.Issuer, "oidc-issuer", "https://accounts.google.com", "OpenID provider people log in with (its issuer URL, exactly as its discovery document says)")
	f.StringVar(&o.Login.ClientID, "oidc-client-id", "", "OAuth client id at the provider; enables fcm login (default $GOOGLE_CLIENT_ID)")
	f.StringVar(&o.Login.ClientSecret, "oidc-client-secret", "", "OAuth client secret (default $GOOGLE_CLIENT_SECRET; the environment keeps it out of ps)")
	f.StringArrayVar(&o.Login.Allow, "allow", nil, "who may log in: emails, @domains, or * for anyone with a verified email; comma-separated or repeated (fcm users allow adds more at run time)")
	f.StringVar(&o.Login.PublicURL, "public-url", "", "the daemon's URL as browsers reach it, for the login redirect (default https://fcm.<domain>, or http://<listen> without an edge)")
	f.StringVar(&o.ReleasesDir, "releases-dir", "", "client tarballs served at /releases/fcm-<os>-<arch>.tar.gz and by /install.sh (default <data-dir>/releases; make release RELEASES=<dir> fills it)")
	f.IntVar(&o.Login.MaxVMsPerUser, "max-vms-per-user", vm.DefaultMaxVMsPerUser, "most VMs one user may have (the admin token has no limit); 0: no limit")
	f.IntVar(&o.MaxMemoryPerUser, "max-memory-per-user", vm.DefaultMaxMemoryMiBPerUser, "most memory in MiB all of one user's VMs, running or stopped, may have together (the admin token has no limit); 0: no limit")
	f.IntVar(&o.MaxCPUsPerUser, "max-cpus-per-user", vm.DefaultMaxCPUsPerUser, "most vCPUs all of one user's VMs, running or stopped, may have together (the admin token has no limit); 0: no limit")
	f.StringVar(&maxPush, "max-push-size", "1G", "largest pack one git push may send; git refuses a larger one before keeping any of it")
	f.StringVar(&maxRepos, "max-repo-size-per-user", "5G", "most disk the git repositories of one user's apps may use; a push is refused beyond it; 0: no limit")
	f.IntVar(&o.Git.MaxPushesPerUser, "max-pushes-per-user", deploy.DefaultMaxPushesPerUser, "git pushes at once to one user's apps (one at a time per app sends its pack); 0: no limit")
	f.IntVar(&o.Git.MaxPushes, "max-pushes", deploy.DefaultMaxPushes, "git pushes at once on the host; 0: no limit")
	return cmd
}

// onOff is a boolean flag spelled on or off.
type onOff struct{ v *bool }

func (f onOff) String() string {
	if f.v != nil && *f.v {
		return "on"
	}
	return "off"
}

func (f onOff) Set(s string) error {
	switch s {
	case "on":
		*f.v = true
	case "off":
		*f.v = false
	default:
		return fmt.Errorf("want on or off, not %q", s)
	}
	return nil
}

func (onOff) Type() string { return "on|off" }

// DefaultSuspendAfter is fcm daemon --suspend-after.
const DefaultSuspendAfter = 5 * time.Minute

// suspendAfterFlag is a duration such as 5m, or off.
type suspendAfterFlag struct{ v *time.Duration }

func (f suspendAfterFlag) String() string {
	if f.v == nil {
		return ""
	}
	return api.FormatSuspendAfter(*f.v)
}

func (f suspendAfterFlag) Set(s string) error {
	d, err := api.ParseSuspendAfter(s)
	if err != nil {
		return err
	}
	*f.v = d
	return nil
}

func (suspendAfterFlag) Type() string { return "duration|off" }

// storeFlag is --store: auto, dir or xfs-loop.
type storeFlag struct{ m *vmstore.Mode }

func (f storeFlag) String() string {
	if f.m == nil {
		return ""
	}
	return string(*f.m)
}

func (f storeFlag) Set(s string) error {
	m, err := vmstore.ParseMode(s)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "--store "))
	}
	*f.m = m
	return nil
}

func (f storeFlag) Type() string { return "auto|dir|xfs-loop" }
