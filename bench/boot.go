package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
	"golang.org/x/crypto/ssh"
)

// bootSample is one boot's measurements.
type bootSample struct {
	banner, command, powerOff time.Duration
	rssKiB                    int
	stages                    map[string]time.Duration // guest uptime at each console stage line
	kernelStart               time.Duration            // hypervisor start -> kernel start (see consoleWatch)
}

// runBootBench boots the minimal image runs times and prints the medians and
// where the time went; it returns the samples.
func runBootBench(ctx context.Context, w io.Writer, runs int) ([]bootSample, error) {
	samples, accel, err := bootRuns(ctx, runs)
	if err != nil {
		return nil, err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ACCEL\tMEASURE\tMEDIAN\tMIN\tMAX\n")
	row := func(name string, get func(bootSample) time.Duration) {
		var v []time.Duration
		for _, s := range samples {
			v = append(v, get(s))
		}
		slices.Sort(v)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", accel, name, v[len(v)/2].Round(10*time.Millisecond),
			v[0].Round(10*time.Millisecond), v[len(v)-1].Round(10*time.Millisecond))
	}
	row("start -> SSH banner", func(s bootSample) time.Duration { return s.banner })
	row("start -> first SSH command", func(s bootSample) time.Duration { return s.command })
	row("ctrl-alt-del -> qemu exited", func(s bootSample) time.Duration { return s.powerOff })
	var rss []int
	for _, s := range samples {
		rss = append(rss, s.rssKiB)
	}
	slices.Sort(rss)
	fmt.Fprintf(tw, "%s\tqemu RSS after boot (512 MiB guest)\t%d MiB\t%d MiB\t%d MiB\n", accel,
		rss[len(rss)/2]/1024, rss[0]/1024, rss[len(rss)-1]/1024)
	fmt.Fprintf(tw, "(%d boots of the minimal image over a shared base, disks made as create makes them, not timed)\n", runs)
	if err := tw.Flush(); err != nil {
		return nil, err
	}
	fmt.Fprintln(w)
	return samples, printBootStages(w, samples, accel)
}

// bootRuns boots the minimal image ($FCM_TEST_IMAGE) runs times with the
// real QEMU driver, on a bridge and tap of its own that it removes after.
func bootRuns(ctx context.Context, runs int) ([]bootSample, string, error) {
	imageDir := envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image")
	d, err := qemu.New(qemu.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, "", err
	}
	tmp, err := os.MkdirTemp("", "fcm-bench-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(tmp)
	// Left by an earlier run in this namespace (the default run boots twice).
	exec.Command("ip", "link", "del", "tap_bench").Run()
	exec.Command("ip", "link", "del", "fcm0").Run()
	for _, c := range [][]string{
		{"link", "add", "fcm0", "type", "bridge"},
		{"addr", "add", "172.16.0.1/24", "dev", "fcm0"},
		{"link", "set", "fcm0", "up"},
		{"tuntap", "add", "dev", "tap_bench", "mode", "tap"},
		{"link", "set", "tap_bench", "master", "fcm0", "up"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("ip %v: %w: %s", c, err, out)
		}
	}
	defer exec.Command("ip", "link", "del", "fcm0").Run()
	defer exec.Command("ip", "link", "del", "tap_bench").Run()
	key, err := guest.LoadOrCreateKey(filepath.Join(tmp, "key"))
	if err != nil {
		return nil, "", err
	}
	tpls := &disk.Templates{Dir: filepath.Join(tmp, "templates")}
	var samples []bootSample
	for i := 0; i < runs; i++ {
		s, err := bootOnce(ctx, d, tpls, imageDir, filepath.Join(tmp, fmt.Sprint(i)), key)
		if err != nil {
			return nil, "", fmt.Errorf("boot %d: %w", i+1, err)
		}
		samples = append(samples, s)
	}
	return samples, string(d.Accel()), nil
}

// bootOnce makes a VM's own disks as create does (a data disk cloned from
// the template, swap and config drives) over the image's base, boots it to
// SSH, powers it off and reads its console's stage lines.
func bootOnce(ctx context.Context, d *qemu.Driver, tpls *disk.Templates, imageDir, dir string, key ssh.Signer) (bootSample, error) {
	var s bootSample
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	ident, err := guest.NewIdentity(key.PublicKey())
	if err != nil {
		return s, err
	}
	if _, err := vm.MakeDisks(ctx, dir, tpls, 2<<30, 512, ident); err != nil {
		return s, err
	}
	ip := net.IPv4(172, 16, 0, 60)
	spec := vmm.Spec{
		ID: "bench", Dir: dir,
		Kernel: filepath.Join(imageDir, image.KernelFile),
		Initrd: filepath.Join(imageDir, image.InitrdFile),
		BootArgs: guest.BootArgs(guest.Boot{Address: ip, Gateway: net.IPv4(172, 16, 0, 1), Mask: net.CIDRMask(24, 32),
			Hostname: "bench", Overlay: true}),
		Drives:    vm.Drives(dir, &base.Base{Dir: imageDir}, true),
		TapDevice: "tap_bench", MAC: "06:00:ac:10:00:3c",
		VCPUs: 1, MemoryMiB: 512,
	}
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	watch := watchConsole(filepath.Join(dir, qemu.ConsoleLog), start)
	inst, err := d.Start(bctx, spec)
	if err != nil {
		watch.finish()
		return s, err
	}
	defer func() {
		inst.Kill()
		inst.Wait(context.Background())
	}()
	err = waitBanner(bctx, net.JoinHostPort(ip.String(), "22"))
	s.banner = time.Since(start)
	s.stages, s.kernelStart = watch.finish()
	if err != nil {
		return s, err
	}
	c := &guest.Client{Addr: net.JoinHostPort(ip.String(), "22"), Signer: key, HostKey: ident.HostKey}
	defer c.Close()
	if err := c.WaitReady(bctx); err != nil {
		return s, err
	}
	s.command = time.Since(start)
	s.rssKiB = rssKiB(inst.PID())
	// "sshd listening" may reach the console just after the host saw the banner.
	if _, ok := s.stages["sshd listening"]; !ok {
		if data, err := os.ReadFile(filepath.Join(dir, qemu.ConsoleLog)); err == nil {
			s.stages = parseStages(string(data))
		}
	}
	start = time.Now()
	graceful, err := vmm.Stop(bctx, inst, 30*time.Second)
	if err != nil || !graceful {
		return s, fmt.Errorf("stop: graceful=%v: %v", graceful, err)
	}
	s.powerOff = time.Since(start)
	return s, nil
}

// waitBanner returns when the guest's sshd sends its "SSH-2.0" banner.
func waitBanner(ctx context.Context, addr string) error {
	for {
		var dl net.Dialer
		conn, err := dl.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if strings.HasPrefix(line, "SSH-2.0") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no ssh banner from %s: %w", addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rssKiB reads VmRSS of a process.
func rssKiB(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
