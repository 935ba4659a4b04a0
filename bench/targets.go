package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/image"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// The targets.
const (
	goalCreateOverhead = 50 * time.Millisecond
	goalVMDisk         = 16 << 20
	goalCreatesPerSec  = 100
	goalListP99        = 10 * time.Millisecond
	targetCreates      = 20 // timed creates per filesystem
	targetBoots        = 3  // boots for fcm's share, when the boot bench did not run
)

// targetRow is one line of the targets table.
type targetRow struct {
	target, measured, goal, result, detail string
}

// verdict is "ok" when met holds, else "MISS".
func verdict(met bool) string {
	if met {
		return "ok"
	}
	return "MISS"
}

// errorRow is the row of a target whose measurement failed.
func errorRow(target, goal string, err error) targetRow {
	return targetRow{target, "error", goal, "MISS", err.Error()}
}

// runTargetsBench measures the targets in one run and prints one
// table, a row per target, and footnotes saying how. boots are the boot
// bench's samples when it ran in this process (else it boots targetBoots
// times itself).
func runTargetsBench(ctx context.Context, w io.Writer, boots []bootSample) error {
	var rows []targetRow
	var notes []string
	load := loadAvg()
	minimal := envOr("FCM_TEST_IMAGE", "/var/cache/fcm/test-image")
	full := envOr("FCM_TEST_IMAGE_FULL", "/var/cache/fcm/test-image-full")
	if _, err := os.Stat(filepath.Join(full, image.ManifestFile)); err != nil {
		notes = append(notes, fmt.Sprintf("NOTE: no full image in %s (%v): the create rows use the minimal image %s", full, err, minimal))
		full = minimal
	}

	// a, b: create overhead and host disk per VM, with the real QEMU driver.
	for _, fs := range []string{"ext4", "xfs"} {
		r, err := createOnFS(ctx, fs, full)
		if err != nil {
			rows = append(rows, errorRow("create overhead p50, "+fs, "<= 50ms", err))
			continue
		}
		rows = append(rows, r.rows()...)
		notes = append(notes, r.notes()...)
	}

	// c: parallel creates and 100 VMs through the API, with the no-boot driver.
	if p, err := parallelCreates(ctx, minimal); err != nil {
		rows = append(rows, errorRow("20 parallel creates (no-boot)", ">= 100/s", err))
	} else {
		rows = append(rows, p.rows()...)
		notes = append(notes, p.notes()...)
	}

	// d: the API's list with 1,000 VMs.
	if l, err := measureList(); err != nil {
		rows = append(rows, errorRow("GET /v1/vms, 1000 VMs, p99", "<= 10ms", err))
	} else {
		rows = append(rows, targetRow{"GET /v1/vms, 1000 VMs, p99", diskBenchDur(l.p99), fmt.Sprintf("<= %v", goalListP99),
			verdict(l.p99 <= goalListP99), fmt.Sprintf("p50 %s, %d KiB, %d requests", diskBenchDur(l.p50), l.bytes>>10, l.n)})
	}

	// e: fcm's own share of a boot.
	accel := "?"
	if d, err := qemu.New(qemu.Options{Logger: quiet}); err == nil {
		accel = string(d.Accel())
	}
	if len(boots) == 0 {
		var err error
		if boots, _, err = bootRuns(ctx, targetBoots); err != nil {
			rows = append(rows, errorRow("boot: fcm's own share", "report", err))
		}
	}
	if len(boots) > 0 {
		rows = append(rows, bootShareRow(boots))
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tMEASURED\tGOAL\tRESULT\tDETAIL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.target, r.measured, r.goal, r.result, r.detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	notes = append(notes,
		fmt.Sprintf("machine: %d cores (%s), QEMU accel %s, host kernel %s; load average %s at the start, %s at the end",
			runtime.NumCPU(), cpuModel(), accel, unix.ByteSliceToString(uts.Release[:]), load, loadAvg()),
		fmt.Sprintf("images: minimal %s (%s), full %s (%s)", imageID(minimal), minimal, imageID(full), full))
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, "- "+n); err != nil {
			return err
		}
	}
	return nil
}

// bootShareRow is the boot target: fcm's own share of a boot (initrd and
// fcm-init stages), reported, with no hard goal.
func bootShareRow(boots []bootSample) targetRow {
	share, _, _, n := medianOf(boots, fcmShare)
	total, _, _, _ := medianOf(boots, func(s bootSample) (time.Duration, bool) { return s.banner, true })
	initrd, _, _, _ := medianOf(boots, between("initrd", "root mounted"))
	handover, _, _, _ := medianOf(boots, between("root mounted", "init"))
	init, _, _, _ := medianOf(boots, between("init", "sshd started"))
	if n == 0 {
		return targetRow{"boot: fcm's own share", "no stage lines", "report", "MISS",
			"the console had no fcm-initrd/fcm-init boot lines (an image without them?)"}
	}
	return targetRow{"boot: fcm's own share (median)", diskBenchDur(share), "report", "-",
		fmt.Sprintf("initrd %s + handover %s + fcm-init to sshd %s, of %s start -> SSH banner; %d boots, minimal image",
			diskBenchDur(initrd), diskBenchDur(handover), diskBenchDur(init), diskBenchDur(total), n)}
}

// imageID is the short content id of the image in dir, or why there is none.
func imageID(dir string) string {
	m, err := image.ReadManifest(dir)
	if err != nil {
		return "unknown"
	}
	if m.ID == "" {
		return "no id (built before ids)"
	}
	return base.Short(m.ID) + " " + m.Variant
}

// loadAvg is the host's 1-minute load average: other work on the host slows
// every number here, TCG boots most.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
}

// cpuModel is the host CPU's model name.
func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
