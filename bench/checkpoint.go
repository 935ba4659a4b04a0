package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
	"github.com/fcmhost/fcm/internal/vmstore"
)

// Goals of the checkpoint bench (issue 23).
const (
	goalCheckpoint     = 50 * time.Millisecond
	goalCheckpointDisk = 1 << 20
	goalRestore        = 100 * time.Millisecond
	goalForkExtra      = 50 * time.Millisecond
)

// checkpointSample is what one filesystem's run measured.
type checkpointSample struct {
	fs, store                string
	small, large             []vm.Checkpoint    // checkpoints with 1 MiB and 1 GiB written
	diskSmall, diskLarge     []int64            // host disk each took
	restores                 []time.Duration    // request to the hypervisor's start, less the guest's sync
	restoreParts             [][4]time.Duration // the undo checkpoint's share, kill, swap, the rest
	forks, creates           []time.Duration    // request to the hypervisor's start
	restoreBoots, forkBoots  []time.Duration    // the hypervisor's start to SSH
	smallWritten, largeWrite time.Duration
}

// runCheckpointBench measures checkpoints, restores and forks of a real
// QEMU VM on a data dir on ext4 (the daemon's XFS store in a loop file) and
// on XFS (reflinks in the data dir), and prints one table.
func runCheckpointBench(ctx context.Context, w io.Writer, cycles int) error {
	var samples []checkpointSample
	for _, fs := range []string{"ext4", "xfs"} {
		s, err := checkpointRun(ctx, fs, cycles)
		if err != nil {
			return fmt.Errorf("%s: %w", fs, err)
		}
		samples = append(samples, s)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tfs (store)\tmeasured\tgoal\tresult\tdetail")
	for _, s := range samples {
		where := s.fs + " (" + s.store + ")"
		for _, c := range []struct {
			what string
			cps  []vm.Checkpoint
		}{{"checkpoint, 1 MiB written: fcm's share p50", s.small}, {"checkpoint, 1 GiB written: fcm's share p50", s.large}} {
			share, paused, sync := checkpointTimes(c.cps)
			p := percentile(share, 0.5)
			fmt.Fprintf(tw, "%s\t%s\t%s\t<= %s\t%s\tp90 %s; guest paused p50 %s, max %s; guest sync p50 %s (the guest's, not fcm's); n=%d\n",
				c.what, where, ms(p), ms(goalCheckpoint), verdict(p <= goalCheckpoint), ms(percentile(share, 0.9)),
				ms(percentile(paused, 0.5)), ms(percentile(paused, 1)), ms(percentile(sync, 0.5)), len(share))
		}
		for _, d := range []struct {
			what string
			n    []int64
		}{{"host disk per new checkpoint, 1 MiB written", s.diskSmall}, {"host disk per new checkpoint, 1 GiB written", s.diskLarge}} {
			worst := int64(0)
			for _, n := range d.n {
				worst = max(worst, n)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d KiB\t<= %d KiB\t%s\tthe most of %d (statfs of the host filesystem before and after)\n",
				d.what, where, worst>>10, goalCheckpointDisk>>10, verdict(worst <= goalCheckpointDisk), len(d.n))
		}
		p := percentile(s.restores, 0.5)
		var parts [4][]time.Duration
		for _, r := range s.restoreParts {
			for i := range r {
				parts[i] = append(parts[i], r[i])
			}
		}
		fmt.Fprintf(tw, "restore: fcm's share before the boot starts, p50\t%s\t%s\t<= %s\t%s\tp50s: undo checkpoint %s, kill %s, disk swap %s, tap and hypervisor start %s; then boot to SSH p50 %s; n=%d\n",
			where, ms(p), ms(goalRestore), verdict(p <= goalRestore), ms(percentile(parts[0], 0.5)), ms(percentile(parts[1], 0.5)),
			ms(percentile(parts[2], 0.5)), ms(percentile(parts[3], 0.5)), ms(percentile(s.restoreBoots, 0.5)), len(s.restores))
		fork, create := percentile(s.forks, 0.5), percentile(s.creates, 0.5)
		fmt.Fprintf(tw, "fork: fcm's share beyond a create's, p50\t%s\t%s\t<= %s\t%s\tfork %s vs create %s to the hypervisor's start; then boot to SSH p50 %s; n=%d\n",
			where, ms(fork-create), ms(goalForkExtra), verdict(fork-create <= goalForkExtra), ms(fork), ms(create), ms(percentile(s.forkBoots, 0.5)), len(s.forks))
	}
	return tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// checkpointTimes are the checkpoints' fcm shares, pauses and guest syncs.
func checkpointTimes(cps []vm.Checkpoint) (share, paused, sync []time.Duration) {
	for _, c := range cps {
		share, paused, sync = append(share, c.Took), append(paused, c.Paused), append(sync, c.Sync)
	}
	return
}

// checkpointRun is the bench on a fresh filesystem of type fs.
func checkpointRun(ctx context.Context, fs string, cycles int) (s checkpointSample, err error) {
	s.fs = fs
	tmp, err := os.MkdirTemp("", "fcm-bc-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil { // the hypervisors' users pass through
		return s, err
	}
	mnt, unmount, err := diskBenchMount(ctx, tmp, fs, 24<<30)
	if err != nil {
		return s, err
	}
	defer func() {
		if uerr := unmount(); uerr != nil && err == nil {
			err = uerr
		}
	}()
	vs, err := vmstore.Open(ctx, mnt, vmstore.ModeAuto, quiet)
	if err != nil {
		return s, err
	}
	s.store = string(vs.Kind)
	if vs.Kind == vmstore.ModeXFSLoop {
		defer unmountStore(mnt)
	}
	d, err := qemu.New(qemu.Options{Logger: quiet})
	if err != nil {
		return s, err
	}
	m, st, err := benchManagerImage(mnt, d, nil, envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image"), func(c *vm.Config) {
		c.StoreDir = vs.Root
		c.KeepCheckpoints = 1000
	})
	if err != nil {
		return s, err
	}
	defer st.Close()
	if err := os.MkdirAll(filepath.Join(vs.Root, "vms"), 0o711); err != nil {
		return s, err
	}
	os.Chmod(vs.Root, 0o711)
	var made []string
	defer func() {
		for _, n := range made {
			m.Destroy(context.WithoutCancel(ctx), n, "")
		}
	}()
	create := func(name string) (*store.VM, time.Duration, time.Duration, error) {
		t, started := time.Now(), time.Duration(0)
		v, err := m.Create(ctx, "admin", api.CreateVMRequest{Name: name, MemoryMiB: 512}, func(_ *store.VM, step, _ string) {
			if step == "boot" {
				started = time.Since(t)
			}
		})
		if err == nil {
			made = append(made, name)
		}
		return v, started, time.Since(t) - started, err
	}
	v, _, _, err := create("ckpt")
	if err != nil {
		return s, err
	}
	g, err := m.Shared(v)
	if err != nil {
		return s, err
	}
	run := func(cmd string) error {
		if out, err := g.Run(ctx, cmd); err != nil {
			return fmt.Errorf("%s: %w: %s", cmd, err, out)
		}
		return nil
	}
	take := func(into *[]vm.Checkpoint, disk *[]int64) error {
		used := usedBytes(mnt)
		c, err := m.CreateCheckpoint(ctx, v.Name, "", "bench", "admin")
		if err != nil {
			return err
		}
		*disk = append(*disk, usedBytes(mnt)-used)
		*into = append(*into, *c)
		return nil
	}
	for i := 0; i < cycles; i++ {
		if err := run(fmt.Sprintf("dd if=/dev/urandom of=/root/small-%d bs=1M count=1 conv=fsync status=none", i)); err != nil {
			return s, err
		}
		if err := take(&s.small, &s.diskSmall); err != nil {
			return s, err
		}
	}
	t := time.Now()
	if err := run("dd if=/dev/zero of=/root/large bs=1M count=1024 conv=fsync status=none"); err != nil {
		return s, err
	}
	s.largeWrite = time.Since(t)
	for i := 0; i < cycles; i++ {
		if err := run(fmt.Sprintf("dd if=/dev/urandom of=/root/large bs=1M count=1 seek=%d conv=notrunc,fsync status=none", i)); err != nil {
			return s, err
		}
		if err := take(&s.large, &s.diskLarge); err != nil {
			return s, err
		}
	}
	restores := min(cycles, 3)
	for i := 0; i < restores; i++ {
		t, started := time.Now(), time.Duration(0)
		res, err := m.Restore(ctx, v.Name, "", s.small[i].N, "admin", func(_ *store.VM, step, msg string) {
			if os.Getenv("FCM_BENCH_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "restore %s: +%s %s: %s\n", fs, ms(time.Since(t)), step, msg)
			}
			if step == "boot" {
				started = time.Since(t)
			}
		})
		if err != nil {
			return s, err
		}
		s.restores = append(s.restores, started-res.Undo.Sync)
		s.restoreParts = append(s.restoreParts, [4]time.Duration{res.Undo.Took, res.Kill, res.Swap, started - res.Undo.Sync - res.Undo.Took - res.Kill - res.Swap})
		s.restoreBoots = append(s.restoreBoots, time.Since(t)-started)
	}
	for i := 0; i < restores; i++ {
		name := fmt.Sprintf("fork%d", i)
		t, started := time.Now(), time.Duration(0)
		_, err := m.Fork(ctx, vm.Owner{ID: "admin"}, v.Name, "", s.large[i].N, name, func(_ *store.VM, step, _ string) {
			if step == "boot" {
				started = time.Since(t)
			}
		})
		if err != nil {
			return s, err
		}
		made = append(made, name)
		s.forks = append(s.forks, started)
		s.forkBoots = append(s.forkBoots, time.Since(t)-started)
		m.Destroy(ctx, name, "")
		_, started, _, err = create(fmt.Sprintf("plain%d", i))
		if err != nil {
			return s, err
		}
		s.creates = append(s.creates, started)
		m.Destroy(ctx, fmt.Sprintf("plain%d", i), "")
	}
	return s, nil
}

// usedBytes is what is in use on dir's filesystem.
func usedBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// unmountStore unmounts the XFS store vmstore made in dataDir and detaches
// its loop device.
func unmountStore(dataDir string) {
	diskBenchRun(context.Background(), "umount", filepath.Join(dataDir, vmstore.MountPoint))
	out, _ := exec.Command("losetup", "-n", "-O", "NAME", "-j", filepath.Join(dataDir, vmstore.ImageFile)).Output()
	for _, dev := range strings.Fields(string(out)) {
		diskBenchRun(context.Background(), "losetup", "-d", dev)
	}
}
