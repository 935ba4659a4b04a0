package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/edge"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/network"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	_ "github.com/fcmhost/fcm/internal/vmm/firecracker" // registers the firecracker driver
	"github.com/fcmhost/fcm/internal/vmm/qemu"
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

	// Per-VM maxima create enforces (--max-cpus, --max-memory in MiB, --max-disk
	// in bytes); zero: vm's defaults.
	MaxCPUs      int
	MaxMemoryMiB int
	MaxDiskBytes int64
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
	netCfg := network.Config{Bridge: o.Bridge, Subnet: subnet.Masked()}
	if err := netCfg.Validate(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	edgeCfg, err := o.Edge.config(o.Listen, subnet.Masked())
	if err != nil {
		return err
	}
	gitPort, err := gitSSHPort(o.GitListen)
	if err != nil {
		return err
	}
	if d := filepath.Join(o.DataDir, "vms", "12345678"); len(d) > vmm.MaxDirLen {
		return fmt.Errorf("--data-dir %s is too long: VM directories under it (%d bytes) must stay within %d bytes for their unix sockets", o.DataDir, len(d), vmm.MaxDirLen)
	}
	img := vm.Image{
		Kernel: pick(o.Kernel, filepath.Join(o.DataDir, image.KernelFile)),
		Initrd: pick(o.Initrd, filepath.Join(o.DataDir, image.InitrdFile)),
		Rootfs: pick(o.Rootfs, filepath.Join(o.DataDir, image.RootfsFile)),
	}
	for _, f := range []string{img.Kernel, img.Initrd, img.Rootfs} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("guest image: %s is missing: build it with 'sudo fcm image build --out %s' (or pass --kernel/--initrd/--rootfs)", f, o.DataDir)
		}
	}
	if err := os.MkdirAll(filepath.Join(o.DataDir, "vms"), 0o700); err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(o.DataDir, "fcm.db"), 500*time.Millisecond)
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("another fcm daemon is using %s (it holds the lock on fcm.db)", o.DataDir)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	tokenPath, created, err := ensureAdminToken(st, o.DataDir)
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

	host, port, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	apiPort, _ := strconv.Atoi(port)
	netCfg.ProtectPorts = protectPorts(apiPort, gitPort)
	hostNet, err := network.Setup(ctx, netCfg)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	mgr, err := vm.New(vm.Config{
		DataDir: o.DataDir, Image: img, Driver: driver, Network: hostNet,
		Subnet: netCfg.Subnet, Store: st, Key: key, Log: o.Log, Bridge: netCfg.Bridge,
		MaxCPUs: o.MaxCPUs, MaxMemoryMiB: o.MaxMemoryMiB, MaxDiskBytes: o.MaxDiskBytes,
	})
	if err != nil {
		return err
	}
	if err := mgr.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}

	var rec *edge.Reconciler
	if edgeCfg != nil {
		rec = edge.New(*edgeCfg, Sites(st), o.Log)
		go rec.Run(ctx)
		o.Log.Info("edge", "caddy", edgeCfg.Admin, "domain", edgeCfg.Domain, "daemon", edgeCfg.URL(edge.DaemonHost))
	}

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	server := &Server{Store: st, VMs: mgr, Guests: mgr, Version: o.Version, Hypervisor: driver.Name(), Log: o.Log, Edge: rec}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	server.Deploys = &deploy.Service{DataDir: o.DataDir, Store: st, Guests: mgr, HookBin: self,
		DaemonURL: "http://" + ln.Addr().String(), Log: o.Log, URL: func(v *store.VM) string { return appURL(server, v) }}
	if err := server.Deploys.Prepare(ctx, func(name string) bool { _, err := st.GetVM(name); return err == nil }); err != nil {
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
	srv := &http.Server{Handler: server.Handler(), ReadHeaderTimeout: 10 * time.Second}
	if o.Out != nil {
		fmt.Fprintf(o.Out, "fcm daemon %s listening on http://%s (hypervisor %s, bridge %s %s, data %s)\n",
			o.Version, ln.Addr(), driver.Name(), netCfg.Bridge, netCfg.Subnet, o.DataDir)
		if created {
			fmt.Fprintf(o.Out, "Admin token written to %s. Give it to the CLI with:\n  sudo cat %s > ~/.fcm-token && chmod 600 ~/.fcm-token\n", tokenPath, tokenPath)
		}
		if host != "127.0.0.1" && host != "localhost" && host != "::1" {
			fmt.Fprintf(o.Out, "warning: the API listens on %s, beyond loopback, over plain HTTP\n", host)
		}
		if edgeCfg != nil {
			fmt.Fprintf(o.Out, "VMs at https://<name>.%s through Caddy (admin API %s); the API also at %s\n",
				edgeCfg.Domain, edgeCfg.Admin, edgeCfg.URL(edge.DaemonHost))
		} else {
			fmt.Fprintln(o.Out, "No edge (--caddy-admin off): VMs are reached at http://<ip>:<port> from this host")
		}
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

// protectPorts are the host's own services guests must not reach: SSH, Caddy
// admin, and fcm's own (the API, git over SSH).
func protectPorts(own ...int) []uint16 {
	ports := []uint16{22, 2019}
	for _, p := range own {
		if p > 0 && p < 65536 && !slices.Contains(ports, uint16(p)) {
			ports = append(ports, uint16(p))
		}
	}
	return ports
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

// ensureAdminToken makes the admin token on first run and makes sure the store
// knows it on every run (the file is the one copy of the secret).
func ensureAdminToken(st *store.Store, dataDir string) (path string, created bool, err error) {
	path = filepath.Join(dataDir, TokenFile)
	data, err := os.ReadFile(path)
	secret := strings.TrimSpace(string(data))
	if errors.Is(err, os.ErrNotExist) || secret == "" {
		secret = store.NewSecret()
		if err := os.WriteFile(path+".tmp", []byte(secret+"\n"), 0o600); err != nil {
			return "", false, err
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return "", false, err
		}
		created = true
	} else if err != nil {
		return "", false, err
	}
	err = st.Update(func(tx *store.Tx) error {
		if _, err := tx.TokenFor(secret); err == nil {
			return nil
		}
		return tx.PutToken(secret, &store.Token{ID: "admin", Name: "admin", Admin: true})
	})
	return path, created, err
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
