package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fcmhost/fcm/internal/disk"
)

const (
	diskBenchRuns     = 5
	diskBenchBaseSize = 2 << 30   // apparent size of the base image
	diskBenchDataSize = 150 << 20 // real data in it
	diskBenchFSSize   = 8 << 30   // each loop filesystem
)

// diskBenchRow is one line of the disk bench table.
type diskBenchRow struct {
	fs, method      string
	median, min     time.Duration
	allocated, used int64 // st_blocks*512 of the copy; filesystem space it took
}

// runDiskBench prints a table comparing fcm's clone with `cp --sparse=always`
// of a 2 GiB base image on ext4 and on XFS loop filesystems.
//
// For each filesystem it makes an 8 GiB sparse loop filesystem under a
// temporary directory (XFS with reflink=1), puts in it a 2 GiB ext4 image
// holding 150 MiB of random data, then times diskBenchRuns copies by each
// method (destination removed and sync(2) before each run; the page cache
// stays warm). ALLOCATED is what the copy's st_blocks say; FS USED is how
// much free space the filesystem lost to it, which for shared (reflinked)
// extents is next to nothing. It needs root, mkfs.xfs, mkfs.ext4, losetup
// and cp.
func runDiskBench(ctx context.Context, w io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("disk bench: needs root (loop devices and mounts)")
	}
	tmp, err := os.MkdirTemp("", "fcm-diskbench-")
	if err != nil {
		return fmt.Errorf("disk bench: %w", err)
	}
	defer os.RemoveAll(tmp) // runs after every unmount below

	payload := filepath.Join(tmp, "payload")
	if err := diskBenchPayload(payload); err != nil {
		return fmt.Errorf("disk bench: %w", err)
	}

	var rows []diskBenchRow
	for _, fstype := range []string{"xfs", "ext4"} {
		r, err := diskBenchFS(ctx, tmp, fstype, payload)
		if err != nil {
			return fmt.Errorf("disk bench on %s: %w", fstype, err)
		}
		rows = append(rows, r...)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FS\tMETHOD\tMEDIAN\tMIN\tALLOCATED\tFS USED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.fs, r.method,
			diskBenchDur(r.median), diskBenchDur(r.min), diskBenchMiB(r.allocated), diskBenchMiB(r.used))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "(%d runs each; %d GiB base ext4 image with %d MiB of data; sync before each run, warm page cache)\n",
		diskBenchRuns, diskBenchBaseSize>>30, diskBenchDataSize>>20)
	return err
}

// diskBenchPayload writes a directory holding one file of
// diskBenchDataSize random bytes, for mkfs.ext4 -d.
func diskBenchPayload(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "data.bin"))
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{'f', 'c', 'm'})
	if _, err := io.CopyN(f, r, diskBenchDataSize); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return f.Close()
}

// diskBenchFS mounts a fresh loop filesystem of type fstype, makes the base
// image in it and times each copy method there. The filesystem is unmounted
// and its loop device detached before it returns.
func diskBenchFS(ctx context.Context, tmp, fstype, payload string) (rows []diskBenchRow, err error) {
	mnt, cleanup, err := diskBenchMount(ctx, tmp, fstype, diskBenchFSSize)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	base := filepath.Join(mnt, "base-rootfs.img")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		return nil, err
	}
	if err := os.Truncate(base, diskBenchBaseSize); err != nil {
		return nil, err
	}
	if err := diskBenchRun(ctx, "mkfs.ext4", "-q", "-F", "-d", payload, base); err != nil {
		return nil, err
	}
	dst := filepath.Join(mnt, "vm.img")

	var method disk.Method
	fcm := func() error {
		m, err := disk.Clone(ctx, base, dst)
		method = m
		return err
	}
	cp := func(extra ...string) func() error {
		return func() error {
			return diskBenchRun(ctx, "cp", append(append([]string{"--sparse=always"}, extra...), base, dst)...)
		}
	}

	r, err := diskBenchTime(mnt, dst, fcm)
	if err != nil {
		return nil, err
	}
	r.fs, r.method = fstype, fmt.Sprintf("fcm (%s)", method)
	rows = append(rows, r)

	cases := []struct {
		label string
		extra []string
	}{{"cp --sparse=always", nil}}
	if fstype == "xfs" {
		// coreutils ≥ 9 already shares extents on XFS (copy_file_range
		// remaps them); show what a real copy costs too.
		cases = append(cases, struct {
			label string
			extra []string
		}{"cp --sparse=always --reflink=never", []string{"--reflink=never"}})
	}
	for _, c := range cases {
		r, err := diskBenchTime(mnt, dst, cp(c.extra...))
		if err != nil {
			return nil, err
		}
		r.fs, r.method = fstype, c.label
		rows = append(rows, r)
	}
	return rows, os.Remove(dst)
}

// diskBenchTime runs do diskBenchRuns times, each after removing dst,
// syncing and letting the freed space settle, and returns the median and minimum time and, for the last run,
// dst's allocation and the filesystem space it took.
func diskBenchTime(mnt, dst string, do func() error) (diskBenchRow, error) {
	var (
		times []time.Duration
		row   diskBenchRow
	)
	for range diskBenchRuns {
		if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return row, err
		}
		before, err := diskBenchSettle(mnt)
		if err != nil {
			return row, err
		}
		start := time.Now()
		if err := do(); err != nil {
			return row, err
		}
		times = append(times, time.Since(start))

		unix.Sync()
		after, err := diskBenchFree(mnt)
		if err != nil {
			return row, err
		}
		if row.allocated, err = disk.Allocated(dst); err != nil {
			return row, err
		}
		row.used = before - after
	}
	slices.Sort(times)
	row.median, row.min = times[len(times)/2], times[0]
	return row, nil
}

// diskBenchMount makes a sparse file of size bytes in tmp, formats it as
// fstype, attaches a loop device and mounts it; cleanup undoes all that.
func diskBenchMount(ctx context.Context, tmp, fstype string, size int64) (mnt string, cleanup func() error, err error) {
	backing := filepath.Join(tmp, fstype+".img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		return "", nil, err
	}
	if err := os.Truncate(backing, size); err != nil {
		return "", nil, err
	}
	switch fstype {
	case "xfs":
		err = diskBenchRun(ctx, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing)
	case "ext4":
		err = diskBenchRun(ctx, "mkfs.ext4", "-q", "-F", backing)
	default:
		err = fmt.Errorf("unknown filesystem %q", fstype)
	}
	if err != nil {
		return "", nil, err
	}
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", backing).Output()
	if err != nil {
		return "", nil, fmt.Errorf("losetup %s: %w", backing, err)
	}
	dev := strings.TrimSpace(string(out))
	detach := func() error {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			return fmt.Errorf("losetup -d %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	mnt = filepath.Join(tmp, fstype+"-mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, errors.Join(err, detach())
	}
	if err := diskBenchRun(ctx, "mount", "-t", fstype, dev, mnt); err != nil {
		return "", nil, errors.Join(err, detach())
	}
	cleanup = func() error {
		// Not ctx: unmount even when the bench was cancelled.
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			_ = exec.Command("umount", "-l", mnt).Run()
			return errors.Join(fmt.Errorf("umount %s: %w: %s", mnt, err, strings.TrimSpace(string(out))), detach())
		}
		return detach()
	}
	return mnt, cleanup, nil
}

// diskBenchRun runs a command, returning its output in the error if it fails.
func diskBenchRun(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// diskBenchSettle syncs and waits until the free space of the filesystem
// holding path has stopped changing (XFS frees a removed file's blocks in
// the background, after sync(2) returns), then returns it.
func diskBenchSettle(path string) (int64, error) {
	unix.Sync()
	free, err := diskBenchFree(path)
	if err != nil {
		return 0, err
	}
	stable := time.Now()
	for deadline := stable.Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		f, err := diskBenchFree(path)
		if err != nil {
			return 0, err
		}
		if f != free {
			free, stable = f, time.Now()
		} else if time.Since(stable) >= 250*time.Millisecond {
			break
		}
	}
	return free, nil
}

// diskBenchFree returns the free bytes of the filesystem holding path.
func diskBenchFree(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bfree) * st.Bsize, nil
}

// diskBenchDur formats a duration with about three significant digits.
func diskBenchDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// diskBenchMiB formats a byte count in MiB.
func diskBenchMiB(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
