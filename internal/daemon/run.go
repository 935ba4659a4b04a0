package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/network"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/usage"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	_ "github.com/fcmhost/fcm/internal/vmm/firecracker" // registers the firecracker driver
	"github.com/fcmhost/fcm/internal/vmm/qemu"
	"github.com/fcmhost/fcm/internal/vmstore"
	"golang.org/x/crypto/ssh"
)

// Options are the daemon's flags.
type Options struct {
	DataDir    string
	Listen     string
	Hypervisor string // auto, firecracker, qemu
	Bridge     string
	Subnet     string
	Kernel     string // overrides of the image files in DataDir
	Initrd     string
	Rootfs     string
	Version    string
	GitListen  string // git over SSH, e.g. :2222; "off" or "": none
	Edge       EdgeOptions
	Out        io.Writer // what a person starting the daemon should read
	Log        *slog.Logger

	// RotateAdminToken makes a new admin token at start; the old one stops working.
	RotateAdminToken bool

	// AllowEgress are CIDRs guests may reach although they are blocked by
	// default (link-local, private, CGNAT, multicast, the host's networks).
	AllowEgress []string
	// GuestToGuest lets guests talk to each other directly on the bridge.
	GuestToGuest bool
	// Per-VM maxima create enforces (--max-cpus, --max-memory in MiB, --max-disk
	// in bytes); zero: vm's defaults.
	MaxCPUs      int
	MaxMemoryMiB int
	MaxDiskBytes int64
	// DiskReserve is the free space kept on the data dir's filesystem
	// (--disk-reserve), DiskOvercommit how many times the free space beyond it
	// the VMs' disks may be promised (--disk-overcommit); zero: vm's defaults.
	DiskReserve    int64
	DiskOvercommit float64
	// Per-user quotas over all of a user's VMs (--max-memory-per-user in MiB,
	// --max-cpus-per-user); zero: no limit. The VM count is Login.MaxVMsPerUser.
	MaxMemoryPerUser int
	MaxCPUsPerUser   int
	// BootTimeout is how long create and start wait for a booted VM's SSH
	// (--boot-timeout); zero: vm's default.
	BootTimeout time.Duration
	// NameHold is how long a destroyed VM's name stays its last owner's (--name-hold).
	NameHold time.Duration
	// BootConcurrency bounds the boots the daemon does by itself at once
	// (--boot-concurrency; 0: vm.DefaultBootConcurrency).
	BootConcurrency int
	// MemoryReserveMiB is the memory kept for the host (--memory-reserve);
	// zero: vm's default.
	MemoryReserveMiB int
	// Store is where VM disks and checkpoints live (--store): the data dir,
	// or an XFS store in a loop file in it (see vmstore); "" is auto.
	Store vmstore.Mode
	// KeepCheckpoints is how many checkpoints each VM keeps
	// (--keep-checkpoints; 0: vm.DefaultKeepCheckpoints).
	KeepCheckpoints int
	// Resolver is the DNS server (host:port) asked whether a custom domain
	// points at this host (--resolver); "": the system's.
	Resolver string
	// MetricsListen is where Prometheus metrics are served (--metrics-listen);
	// "" or "off": nowhere.
	MetricsListen string
	// Suspend lets VMs be suspended and woken (--suspend on).
	Suspend bool
	// Standbys is how many suspended VMs keep a hypervisor waiting for their
	// wake (--standbys).
	Standbys int
	// SuspendAfter is how long a new VM with a public URL may sit idle
	// before it is suspended (--suspend-after; 0: never).
	SuspendAfter time.Duration
	// MaxBuildOutput and BuildTimeout bound each release of an app: what it
	// may print, how long it may take (--max-build-output, --build-timeout).
	MaxBuildOutput int64
	BuildTimeout   time.Duration

	Login LoginOptions

	// ReleasesDir holds the client tarballs served at /releases/ (make release).
	ReleasesDir string

	// Git bounds git pushes (--max-push-size, --max-repo-size-per-user,
	// --max-pushes-per-user, --max-pushes); its UID and GID are set by Run.
	Git deploy.GitOptions
}

// TokenFile is where the admin token is written, in the data dir.
const TokenFile = ".token"

// Run starts the daemon and serves until ctx ends. VMs keep running when it
// returns: they belong to the host, not to this process.
func Run(ctx context.Context, o Options) error {
	if os.Geteuid() != 0 {
		return errors.New("fcm daemon needs root (bridge, taps, nftables, VMs): run it with sudo")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	slog.SetDefault(o.Log) // drivers log through the default logger
	subnet, err := netip.ParsePrefix(o.Subnet)
	if err != nil {
		return fmt.Errorf("--subnet %q: %w", o.Subnet, err)
	}
	netCfg := network.Config{Bridge: o.Bridge, Subnet: subnet.Masked(), HostPorts: network.DefaultHostPorts, GuestToGuest: o.GuestToGuest}
	for _, a := range o.AllowEgress {
		p, err := netip.ParsePrefix(a)
		if err != nil || !p.Addr().Is4() {
			return fmt.Errorf("--allow-egress %q: want an IPv4 CIDR such as 10.0.0.0/8 or 192.0.2.7/32", a)
		}
		netCfg.AllowEgress = append(netCfg.AllowEgress, p.Masked())
	}
	if err := netCfg.Validate(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	edgeCfg, err := o.Edge.config(o.Listen, subnet.Masked())
	if err != nil {
		return err
	}
	if _, err := o.Login.allowPatterns(); err != nil {
		return err
	}
	if _, err := o.Login.enabled(); err != nil {
		return err
	}
	switch {
	case o.Login.MaxVMsPerUser < 0:
		return fmt.Errorf("--max-vms-per-user %d: want 0 (no limit) or more", o.Login.MaxVMsPerUser)
	case o.MaxMemoryPerUser < 0:
		return fmt.Errorf("--max-memory-per-user %d: want MiB, or 0 (no limit)", o.MaxMemoryPerUser)
	case o.MaxCPUsPerUser < 0:
		return fmt.Errorf("--max-cpus-per-user %d: want 0 (no limit) or more", o.MaxCPUsPerUser)
	}
	gitPort, err := gitSSHPort(o.GitListen)
	if err != nil {
		return err
	}
	if d := filepath.Join(o.DataDir, "vms", "12345678"); len(d) > vmm.MaxDirLen {
		return fmt.Errorf("--data-dir %s is too long: VM directories under it (%d bytes) must stay within %d bytes for their unix sockets", o.DataDir, len(d), vmm.MaxDirLen)
	}
	if o.Resolver != "" {
		if _, port, err := net.SplitHostPort(o.Resolver); err != nil || port == "" {
			return fmt.Errorf("--resolver %q: want a DNS server's host:port, e.g. 1.1.1.1:53", o.Resolver)
		}
	}
	if err := checkDataDir(o.DataDir); err != nil {
		return err
	}
	// Every VM's hypervisor gets a cgroup; under `ip netns exec` /sys/fs/cgroup
	// starts empty.
	if err := cgroup.EnsureMounted(); err != nil {
		return err
	}
	cgroup.SetParent(cgroup.ParentFor(o.DataDir, image.DefaultOutDir))
	src := base.Source{
		Kernel: pick(o.Kernel, filepath.Join(o.DataDir, image.KernelFile)),
		Initrd: pick(o.Initrd, filepath.Join(o.DataDir, image.InitrdFile)),
		Rootfs: pick(o.Rootfs, filepath.Join(o.DataDir, image.RootfsFile)),
	}
	for _, f := range []string{src.Kernel, src.Initrd, src.Rootfs} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("guest image: %s is missing: build it with 'sudo fcm image build --out %s' (or pass --kernel/--initrd/--rootfs)", f, o.DataDir)
		}
	}
	// A new --data-dir is made here, after the checks above refused nothing.
	if err := os.MkdirAll(o.DataDir, 0o711); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	st, err := store.Open(filepath.Join(o.DataDir, "fcm.db"), 500*time.Millisecond)
	if errors.Is(err, store.ErrLocked) {
		if o.RotateAdminToken {
			return fmt.Errorf("another fcm daemon is using %s (it holds the lock on fcm.db): rotate its admin token with 'fcm token rotate'", o.DataDir)
		}
		return fmt.Errorf("another fcm daemon is using %s (it holds the lock on fcm.db)", o.DataDir)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	adminToken, created, err := ensureAdminToken(st, o.DataDir, o.RotateAdminToken)
	if err != nil {
		return err
	}
	key, err := guest.LoadOrCreateKey(filepath.Join(o.DataDir, "id_ed25519"))
	if err != nil {
		return err
	}
	driver, why, err := openDriver(o.Hypervisor)
	if err != nil {
		return err
	}
	o.Log.Info("hypervisor", "driver", driver.Name(), "why", why)
	// The store (a mount, on ext4) is made once everything that refuses a
	// start has passed.
	vs, err := vmstore.Open(ctx, o.DataDir, cmp.Or(o.Store, vmstore.ModeAuto), o.Log)
	if err != nil {
		return err
	}
	o.Log.Info("store", "kind", vs.Kind, "root", vs.Root, "reflink", vs.Reflink, "loop", vs.Loop)
	if d := filepath.Join(vs.Root, "vms", "12345678"); len(d) > vmm.MaxDirLen {
		return fmt.Errorf("--data-dir %s is too long: VM directories in its store (%d bytes) must stay within %d bytes for their unix sockets", o.DataDir, len(d), vmm.MaxDirLen)
	}
	// Hypervisors run as per-VM users that must reach their own vms/<id> (0700,
	// theirs): the data dir, the store and vms/ are searchable (o+x), not listable.
	for _, d := range []string{filepath.Join(o.DataDir, "vms"), filepath.Join(vs.Root, "vms")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	for _, d := range []string{o.DataDir, filepath.Join(o.DataDir, "vms"), vs.Root, filepath.Join(vs.Root, "vms")} {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}

	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	hostNet, err := network.Setup(ctx, netCfg)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	bases, err := base.Open(o.DataDir, src)
	if err != nil {
		return err
	}
	if err := bases.Clean(); err != nil {
		o.Log.Warn("images: leftovers of an interrupted import or prune", "err", err)
	}
	cur, err := bases.Current(ctx)
	if err != nil {
		return err
	}
	o.Log.Info("image", "id", base.Short(cur.ID), "variant", cur.Manifest.Variant, "built", cur.Manifest.Built.Format(time.RFC3339))
	// What the daemon does when it suspends a VM by itself: set once the
	// server is, before anything does.
	var slept atomic.Pointer[func(*store.VM)]
	mets := newMetrics(o.MetricsListen, st)
	mgr, err := vm.New(vm.Config{Observe: observe(mets),
		DataDir: o.DataDir, StoreDir: vs.Root, KeepCheckpoints: o.KeepCheckpoints, Bases: bases, Driver: driver, Network: hostNet,
		Subnet: netCfg.Subnet, Store: st, Key: key, Log: o.Log, Bridge: netCfg.Bridge,
		MaxCPUs: o.MaxCPUs, MaxMemoryMiB: o.MaxMemoryMiB, MaxDiskBytes: o.MaxDiskBytes, BootTimeout: o.BootTimeout, NameHold: o.NameHold,
		DiskReserve: o.DiskReserve, DiskOvercommit: o.DiskOvercommit, MemoryReserveMiB: o.MemoryReserveMiB,
		BootConcurrency: o.BootConcurrency, Suspend: o.Suspend, SuspendAfter: o.SuspendAfter, Standbys: o.Standbys,
		Slept: func(v *store.VM) {
			if f := slept.Load(); f != nil {
				(*f)(v)
			}
		},
	})
	if err != nil {
		return err
	}
	mgr.KeepStoreReserve() // before reconcile's writes
	if err := mgr.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	go mgr.KeepConsoleLogsTrimmed(ctx)
	go mgr.WatchHostDisk(ctx)
	go mgr.Heal(ctx) // boots what should run and does not: after a host restart, a crash

	var rec *edge.Reconciler
	if edgeCfg != nil {
		rec = edge.New(*edgeCfg, Sites(st), o.Log)
		rec.Failed = mets.EdgeError
		go rec.Run(ctx)
		o.Log.Info("edge", "caddy", edgeCfg.Admin, "domain", edgeCfg.Domain, "daemon", edgeCfg.URL(edge.DaemonHost))
	}

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	logins, err := setupLogins(o.Login, st, edgeCfg, ln.Addr(), o.Log)
	if err != nil {
		ln.Close()
		return err
	}
	purge(st, logins, o.Log)
	go keepPurged(ctx, st, logins, o.Log)
	server := &Server{Store: st, VMs: mgr, Guests: mgr, Images: mgr, Version: o.Version, Hypervisor: driver.Name(), Log: o.Log, Edge: rec,
		AdminToken: adminToken, Auth: logins, MaxVMsPerUser: o.Login.MaxVMsPerUser,
		MaxMemoryPerUser: o.MaxMemoryPerUser, MaxCPUsPerUser: o.MaxCPUsPerUser,
		ReleasesDir: pick(o.ReleasesDir, filepath.Join(o.DataDir, "releases")), Metrics: mets, Usage: &usage.Sampler{},
		Resolver: resolver(o.Resolver)}
	go server.sampleUsage(ctx)
	onSleep := func(v *store.VM) {
		server.closeConsoles(v, "the VM was suspended: reconnecting wakes it")
		server.routeChanged(nil, v) // to the waker
	}
	slept.Store(&onSleep)
	if o.Suspend {
		go mgr.SuspendIdle(ctx)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Git.UID, o.Git.GID = deploy.DefaultGitUID, deploy.DefaultGitUID // git never runs as root
	server.Deploys = &deploy.Service{DataDir: o.DataDir, DiskReserve: o.DiskReserve, Store: st, Guests: mgr, HookBin: self, Git: o.Git,
		DaemonURL: "http://" + ln.Addr().String(), Log: o.Log, URL: func(v *store.VM) string { return appURL(server, v) },
		MaxOutput: o.MaxBuildOutput, BuildTimeout: o.BuildTimeout, Live: server.track, Awake: server.awake,
		Deployed: server.deployed}
	if err := server.Deploys.Prepare(ctx); err != nil {
		return fmt.Errorf("git repositories: %w", err)
	}
	var gitLn net.Listener
	var gitHostKey ssh.Signer
	if gitPort != 0 {
		if gitHostKey, err = guest.LoadOrCreateKey(filepath.Join(o.DataDir, GitHostKeyFile)); err != nil {
			return fmt.Errorf("git over SSH: host key: %w", err)
		}
		if gitLn, err = net.Listen("tcp", o.GitListen); err != nil {
			return fmt.Errorf("git over SSH: listen on %s: %w (--git-listen picks another address, off turns it off)", o.GitListen, err)
		}
		defer gitLn.Close()
	}
	var metricsAddr net.Addr
	if mets != nil {
		if metricsAddr, err = serveMetrics(ctx, mets, o.MetricsListen); err != nil {
			return err
		}
	}
	protectFromOOM(o.Log) // all checked: the daemon serves from here
	srv := newHTTPServer(server.Handler())
	if o.Out != nil {
		fmt.Fprintf(o.Out, "fcm daemon %s listening on http://%s (hypervisor %s, bridge %s %s, data %s)\n",
			o.Version, ln.Addr(), driver.Name(), netCfg.Bridge, netCfg.Subnet, o.DataDir)
		if created {
			what := "Admin token written to"
			if o.RotateAdminToken {
				what = "New admin token (the old one no longer works) written to"
			}
			fmt.Fprintf(o.Out, "%s %s. Give it to the CLI with:\n  %s\n", what, adminToken.Path, TokenRecipe(adminToken.Path))
		}
		if host != "127.0.0.1" && host != "localhost" && host != "::1" {
			fmt.Fprintf(o.Out, "warning: the API listens on %s, beyond loopback, over plain HTTP\n", host)
		}
		if logins != nil {
			fmt.Fprintf(o.Out, "Logins with OIDC (%s): fcm login; register the redirect URL %s with the provider\n", logins.Issuer(), logins.RedirectURL())
		}
		if edgeCfg != nil {
			fmt.Fprintf(o.Out, "VMs at https://<name>.%s through Caddy (admin API %s); the API also at %s\n",
				edgeCfg.Domain, edgeCfg.Admin, edgeCfg.URL(edge.DaemonHost))
		} else {
			fmt.Fprintln(o.Out, "No edge (--caddy-admin off): VMs are reached at http://<ip>:<port> from this host")
		}
	}
	if metricsAddr != nil && o.Out != nil {
		fmt.Fprintf(o.Out, "Prometheus metrics at http://%s/metrics\n", metricsAddr)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if gitLn != nil {
		if o.Out != nil {
			fmt.Fprintf(o.Out, "Git over SSH at ssh://git@%s/<app>.git (host key %s; add keys with fcm keys add)\n",
				gitLn.Addr(), ssh.FingerprintSHA256(gitHostKey.PublicKey()))
		}
		go func() {
			if err := server.Deploys.ServeSSH(ctx, gitLn, gitHostKey); err != nil {
				errc <- fmt.Errorf("git over SSH: %w", err)
			}
		}()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	o.Log.Info("shutting down; VMs keep running")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// appURL is where an app answers: its URL through the edge, else the VM's
// address and port.
func appURL(s *Server, v *store.VM) string {
	if u := s.toAPI(v).URL; u != "" {
		return u
	}
	return fmt.Sprintf("http://%s:%d", v.IP, v.Port)
}

func pick(override, def string) string {
	if override != "" {
		return override
	}
	return def
}

// GitHostKeyFile is the SSH host key of git over SSH, in the data dir.
const GitHostKeyFile = "git_host_ed25519"

// gitSSHPort checks --git-listen and returns its port, 0 when it is off.
func gitSSHPort(listen string) (int, error) {
	if listen == "" || listen == "off" {
		return 0, nil
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return 0, fmt.Errorf("--git-listen %q: want host:port or :port (or off): %w", listen, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("--git-listen %q: port out of range 1-65535", listen)
	}
	return n, nil
}

// openDriver picks the hypervisor: auto takes firecracker when its binary is on
// PATH and /dev/kvm opens, qemu otherwise.
func openDriver(name string) (vmm.Driver, string, error) {
	why := "chosen with --hypervisor"
	if name == "auto" || name == "" {
		name, why = "qemu", "auto: no firecracker binary on PATH"
		if _, err := exec.LookPath("firecracker"); err == nil {
			if accel, reason := qemu.ProbeAccel(); accel == qemu.KVM {
				name, why = "firecracker", "auto: firecracker on PATH and KVM usable ("+reason+")"
			} else {
				why = "auto: firecracker found but KVM is not usable: " + reason
			}
		}
	}
	d, err := vmm.Open(name)
	if err != nil {
		return nil, "", fmt.Errorf("--hypervisor: %w", err)
	}
	return d, why, nil
}

// DaemonOOMScoreAdj is the daemon's own oom_score_adj, set at start however it
// was started (fcm.service says the same): the kernel's OOM killer takes a
// VM's hypervisor (500) before the daemon. What a guest makes the daemon hold
// is bounded (release output, transcripts, streams), so a guest cannot grow
// the daemon to use this.
const DaemonOOMScoreAdj = -900

func protectFromOOM(log *slog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(DaemonOOMScoreAdj)), 0); err != nil {
		// Lowering it takes CAP_SYS_RESOURCE, which some containers drop.
		cur, _ := os.ReadFile("/proc/self/oom_score_adj")
		log.Warn("the daemon's oom_score_adj stays "+strings.TrimSpace(string(cur))+": it may not be lowered here (CAP_SYS_RESOURCE)", "err", err)
	}
}

// resolver asks the DNS server at addr (host:port), or is nil (the
// system's) for "".
func resolver(addr string) *net.Resolver {
	if addr == "" {
		return nil
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
