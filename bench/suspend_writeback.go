package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// The write-back bench (-only writeback): what a guest's RAM in a file
// (fcm daemon --suspend on, QEMU's memory-backend-file share=on) costs the
// host's disk while the guest works. The kernel writes the file's dirty
// pages back (about every 30 s, vm.dirty_expire_centisecs), so a guest that
// keeps rewriting its memory makes the host write; with anonymous RAM
// (--suspend off) it writes nothing.

const (
	writebackMiB    = 1024             // the guest's memory
	writebackChurn  = 256              // MiB the guest rewrites, again and again
	writebackWarmup = 40 * time.Second // past the first write-back of the churned pages
	writebackWindow = 60 * time.Second
)

// writebackResult is one daemon mode's measure.
type writebackResult struct {
	suspend     string
	writtenMiB  float64 // on the data dir's disk during the window
	memFileMiB  int64   // mem.ram's blocks on disk at the end
	rounds      int     // churn rounds the guest did in the window
	qemuRSSMiB  int64
	dirtyMaxMiB int64 // the host's Dirty, at most
}

func runWritebackBench(ctx context.Context, w io.Writer) error {
	load := loadAvg()
	var results []writebackResult
	for _, mode := range []string{"off", "on"} {
		r, err := writebackRun(ctx, mode)
		if err != nil {
			return fmt.Errorf("--suspend %s: %w", mode, err)
		}
		results = append(results, r)
	}
	rows := []targetRow{}
	for _, r := range results {
		rows = append(rows, targetRow{
			target:   fmt.Sprintf("host disk writes, --suspend %s, a %d MiB guest rewriting %d MiB of its RAM non-stop", r.suspend, writebackMiB, writebackChurn),
			measured: fmt.Sprintf("%.0f MiB/min", r.writtenMiB*float64(time.Minute)/float64(writebackWindow)),
			goal:     "report",
			result:   "-",
			detail: fmt.Sprintf("%d rounds of %d MiB in %s; host Dirty at most %d MiB; mem.ram %d MiB on disk; QEMU RSS %d MiB",
				r.rounds, writebackChurn, writebackWindow, r.dirtyMaxMiB, r.memFileMiB, r.qemuRSSMiB),
		})
	}
	if err := printRows(w, rows); err != nil {
		return err
	}
	return printNotes(w, []string{
		"setup: a real fcm daemon (QEMU) behind Caddy, --suspend-after off; one VM; in it, `dd if=/dev/zero of=/dev/shm/churn bs=1M count=256 conv=notrunc` in a loop (tmpfs: the guest's RAM)",
		fmt.Sprintf("written: the sectors written to the data dir's disk (/proc/diskstats) in a %s window after %s of churn (the host is shared: its other writes count too)", writebackWindow, writebackWarmup),
		fmt.Sprintf("kernel: vm.dirty_expire_centisecs %s, vm.dirty_writeback_centisecs %s", sysctl("vm/dirty_expire_centisecs"), sysctl("vm/dirty_writeback_centisecs")),
		fmt.Sprintf("load average %s at the start, %s at the end", load, loadAvg()),
	})
}

func writebackRun(ctx context.Context, mode string) (writebackResult, error) {
	r := writebackResult{suspend: mode}
	b, err := startSleepBench(ctx, healSubnet, "--suspend", mode, "--suspend-after", "off")
	if err != nil {
		return r, err
	}
	defer b.close()
	v, err := b.c.CreateVM(ctx, api.CreateVMRequest{Name: "churn", MemoryMiB: writebackMiB, DiskBytes: 1 << 30, Port: healPort}, nil)
	if err != nil {
		return r, fmt.Errorf("create: %w\n%s", err, b.d.tail())
	}
	g, err := guestOf(b.d.dataDir, v)
	if err != nil {
		return r, err
	}
	defer g.Close()
	churn := fmt.Sprintf("setsid sh -c 'while :; do dd if=/dev/zero of=/dev/shm/churn bs=1M count=%d conv=notrunc 2>/dev/null; echo x >> /root/rounds; done' </dev/null >/dev/null 2>&1 &", writebackChurn)
	if out, err := g.Run(ctx, churn); err != nil {
		return r, fmt.Errorf("start the churn: %v: %s", err, out)
	}
	time.Sleep(writebackWarmup)
	dev, err := deviceOf(b.d.dataDir)
	if err != nil {
		return r, err
	}
	rounds := func() int {
		out, _ := g.Run(ctx, "wc -l < /root/rounds")
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return n
	}
	before, r0 := sectorsWritten(dev), rounds()
	end := time.Now().Add(writebackWindow)
	for time.Now().Before(end) {
		r.dirtyMaxMiB = max(r.dirtyMaxMiB, meminfo()["Dirty"]>>10)
		time.Sleep(time.Second)
	}
	r.writtenMiB = float64(sectorsWritten(dev)-before) * 512 / (1 << 20)
	r.rounds = rounds() - r0
	r.memFileMiB = fileBlocks(b.vmDir(v.ID)+"/mem.ram") >> 20
	if cur, err := b.c.GetVM(ctx, "churn"); err == nil && cur.PID > 0 {
		r.qemuRSSMiB = int64(rssKiB(cur.PID)) >> 10
	}
	return r, nil
}

// deviceOf is the "major minor" of the block device path's filesystem is
// on, as /proc/diskstats names it.
func deviceOf(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	// A partition has a line of its own in diskstats.
	return fmt.Sprintf("%d %d", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}

// sectorsWritten is /proc/diskstats' sectors written for dev.
func sectorsWritten(dev string) int64 {
	f, err := os.Open("/proc/diskstats")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) > 9 && fs[0]+" "+fs[1] == dev {
			n, _ := strconv.ParseInt(fs[9], 10, 64)
			return n
		}
	}
	return 0
}

// fileBlocks is the bytes of path's on disk.
func fileBlocks(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

func sysctl(name string) string {
	b, _ := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b))
}

// guestOf is an SSH client to VM v's guest with the daemon's own key.
func guestOf(dataDir string, v *api.VM) (*guest.Client, error) {
	key, err := guest.LoadOrCreateKey(filepath.Join(dataDir, "id_ed25519"))
	if err != nil {
		return nil, err
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v.HostKey))
	if err != nil {
		return nil, fmt.Errorf("vm %s: host key: %w", v.Name, err)
	}
	return &guest.Client{Addr: net.JoinHostPort(v.IP, "22"), Signer: key, HostKey: hk}, nil
}
