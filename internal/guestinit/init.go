package guestinit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/vmconf"
	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// SwapFile is the swap file of a VM booted with fcm.swap=<MiB> on the command
// line and no swap drive (a VM made before swap had a drive of its own).
const SwapFile = "/swapfile"

// Main runs init as process 1 and never returns: it ends with the machine.
func Main() {
	log.SetFlags(0)
	log.SetPrefix("fcm-init: ")
	stage("started") // the kernel ran us and Go's runtime is up
	// Handle signals before anything else: a signal Go has no handler for would make
	// process 1 exit, and the kernel panics when init exits.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGINT, unix.SIGTERM, unix.SIGPWR, unix.SIGUSR2)
	signal.Ignore(unix.SIGHUP, unix.SIGQUIT, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU, unix.SIGPIPE, unix.SIGUSR1)
	in := &initProc{self: selfPath()}
	in.boot()
	in.loop(sigs)
}

type initProc struct {
	self       string
	sshd       int // pid, 0 when not running
	supervisor int // the app supervisor's pid, 0 when not running
	stopping   bool
	swap       string // what swapon was given: a device or SwapFile
}

func selfPath() string {
	if p, err := os.Readlink("/proc/self/exe"); err == nil {
		return p
	}
	return "/sbin/fcm-init"
}

// boot brings the machine up; every step logs and carries on when it fails, so a
// broken detail (a missing swap file) never leaves a VM without SSH.
func (in *initProc) boot() {
	// Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		log.Printf("ctrl-alt-del: %v", err)
	}
	mountAll()
	stage("init")
	disks := findDrives()
	if disks.config != nil {
		applyConfig(disks.config)
	} else {
		log.Printf("no config drive: a host key of our own, and no keys to log in with")
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg, err := ParseCmdline(string(cmdline))
	if err != nil {
		log.Printf("%v: network left unconfigured", err)
	}
	if cfg.Hostname != "" {
		setHostname(cfg)
	}
	if cfg.Address != nil {
		if err := configureNetwork(cfg); err != nil {
			log.Printf("network: %v", err)
		}
	} else if err := linkUp("lo"); err != nil {
		log.Printf("lo: %v", err)
	}
	if len(cfg.DNS) > 0 {
		var b strings.Builder
		for _, d := range cfg.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		writeFile("/etc/resolv.conf", b.String(), 0o644)
	}
	stage("network")
	in.swapOn(disks.swap, swapMiB(string(cmdline)))
	ensureHostKey()
	in.startSSHD()
	stage("sshd started")
	in.startSupervisor()
	go watchPowerButton()
}

// swapOn enables the swap drive, or else the swap file fcm.swap asks for.
func (in *initProc) swapOn(dev string, fileMiB int) {
	if dev == "" && fileMiB > 0 {
		if _, err := os.Stat(SwapFile); os.IsNotExist(err) {
			if err := makeSwapFile(SwapFile, fileMiB); err != nil {
				log.Printf("make swap file %s: %v", SwapFile, err)
			}
		}
		if _, err := os.Stat(SwapFile); err == nil {
			dev = SwapFile
		}
	}
	if dev == "" {
		return
	}
	if err := swapon(dev); err != nil {
		log.Printf("swap %s: %v", dev, err)
		return
	}
	in.swap = dev
}

func mountAll() {
	mounts := []struct {
		src, target, fstype, data string
		flags                     uintptr
	}{
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
		{"devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666", unix.MS_NOSUID | unix.MS_NOEXEC},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
	}
	for _, m := range mounts {
		os.MkdirAll(m.target, 0o755)
		err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data)
		if err != nil && !(errors.Is(err, unix.EBUSY) && m.target == "/dev") {
			log.Printf("mount %s: %v", m.target, err)
		}
	}
	// The initrd may have mounted / read-only; the VM's disk is its own to write.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT, ""); err != nil {
		log.Printf("remount / read-write: %v", err)
	}
	os.Symlink("/proc/self/fd", "/dev/fd")
	os.MkdirAll("/run/sshd", 0o755)
}

func setHostname(cfg Config) {
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		log.Printf("hostname: %v", err)
	}
	writeFile("/etc/hostname", cfg.Hostname+"\n", 0o644)
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if cfg.Address != nil {
		hosts += fmt.Sprintf("%s\t%s\n", cfg.Address, cfg.Hostname)
	} else {
		hosts += fmt.Sprintf("127.0.1.1\t%s\n", cfg.Hostname)
	}
	writeFile("/etc/hosts", hosts, 0o644)
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func configureNetwork(cfg Config) error {
	if err := linkUp("lo"); err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	var link netlink.Link
	var err error
	// The NIC's driver may still be probing when init starts.
	for i := 0; i < 100; i++ {
		if link, err = netlink.LinkByName(cfg.Device); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.Device, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Address, Mask: cfg.Mask}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr.IPNet, cfg.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", cfg.Device, err)
	}
	if cfg.Gateway != nil {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", cfg.Gateway, err)
		}
	}
	return nil
}

// ensureHostKey makes a host key when the VM was booted without a config drive
// (the host normally gives each VM a fresh key and pins it).
func ensureHostKey() {
	if _, err := os.Stat(vmconf.HostKeyPath); err == nil {
		return
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Printf("host key: %v", err)
		return
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		log.Printf("host key: %v", err)
		return
	}
	writeFile(vmconf.HostKeyPath, string(pem.EncodeToMemory(block)), 0o600)
}

func writeFile(path, content string, mode os.FileMode) {
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		log.Printf("write %s: %v", path, err)
	}
}

// spawn starts a process in its own session with the console as its output; init
// reaps it in loop, never through os.Process.Wait.
func spawn(argv []string, env []string) (int, error) {
	return spawnTo(argv, env, nil)
}

// spawnTo is spawn with the process's standard error going to stderr (nil:
// the console).
func spawnTo(argv []string, env []string, stderr *os.File) (int, error) {
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console, _ = os.OpenFile("/dev/null", os.O_WRONLY, 0)
	}
	defer console.Close()
	if stderr == nil {
		stderr = console
	}
	devnull, _ := os.Open("/dev/null")
	defer devnull.Close()
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []*os.File{devnull, console, stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	p.Release()
	return pid, nil
}

var baseEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}

// startSSHD starts sshd, its log (-e: standard error) passed on to the
// console by watchSSHD.
func (in *initProc) startSSHD() {
	r, w, err := os.Pipe()
	if err != nil {
		log.Printf("sshd: %v", err)
		return
	}
	pid, err := spawnTo([]string{"/usr/sbin/sshd", "-D", "-e"}, baseEnv, w)
	w.Close()
	if err != nil {
		r.Close()
		log.Printf("sshd: %v", err)
		return
	}
	in.sshd = pid
	go watchSSHD(r)
}

// startSupervisor starts the app supervisor: the app's processes, and the
// proxy on the VM's port (the placeholder page until the first deploy).
func (in *initProc) startSupervisor() {
	pid, err := spawn([]string{in.self, "guest", "supervise"}, baseEnv)
	if err != nil {
		log.Printf("supervisor: %v", err)
		return
	}
	in.supervisor = pid
}

// loop reaps children, restarts sshd if it dies, and shuts down on request.
func (in *initProc) loop(sigs <-chan os.Signal) {
	for sig := range sigs {
		switch sig {
		case unix.SIGCHLD:
			in.reap()
		default:
			if !in.stopping {
				// The host reads this line from the console to tell a guest
				// that powered itself off (or rebooted) from one that died.
				log.Printf("%s %s (%v)", ShutdownMarker, shutdownKind(sig), sig)
				in.shutdown()
			}
		}
	}
}

func (in *initProc) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if pid == in.sshd && !in.stopping {
			log.Printf("sshd exited (%v); restarting", ws)
			in.sshd = 0
			time.Sleep(500 * time.Millisecond)
			in.startSSHD()
		}
		if pid == in.supervisor && !in.stopping {
			log.Printf("app supervisor exited (%v); restarting", ws)
			in.supervisor = 0
			time.Sleep(500 * time.Millisecond)
			in.startSupervisor()
		}
	}
}

// shutdown asks every process to stop, waits briefly, kills the rest, releases
// swap, syncs, makes / read-only and reboots: the VMM ends with the guest.
func (in *initProc) shutdown() {
	in.stopping = true
	start := time.Now()
	unix.Kill(-1, unix.SIGTERM)
	for time.Since(start) < 5*time.Second {
		pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if pid <= 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	log.Printf("processes stopped in %s", time.Since(start).Round(time.Millisecond))
	unix.Kill(-1, unix.SIGKILL)
	for {
		if _, err := unix.Wait4(-1, nil, 0, nil); err != nil {
			break
		}
	}
	if in.swap != "" {
		swapoff(in.swap)
	}
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Printf("remount / read-only: %v", err)
	}
	unix.Sync()
	log.Printf("rebooting")
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}
