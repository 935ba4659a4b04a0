// Command bench measures fcm's speed and memory targets and prints tables: disk
// clones (fcm vs cp on ext4 and XFS), boot to the SSH banner under the accelerator
// in use and where its time goes (stage lines on the guest's console), graceful
// power-off, QEMU's memory for a 512 MiB guest, the API, the steps of create,
// the targets in one table (create overhead and host disk per VM on ext4
// and XFS, parallel creates, list latency, fcm's share of boot), HTTPS through
// Caddy, git push deploys, the console against direct ssh, self-healing (a
// host restart with 20 VMs serving apps, a hypervisor killed), and suspend and
// wake (-only suspend: fcm's share of a suspend and of a wake on a request
// through Caddy, 256 MiB against 2 GiB guests, against a cold boot), and
// checkpoints (-only checkpoint: fcm's share of a checkpoint with 1 MiB and
// 1 GiB written, the host disk each takes, restores and forks, on ext4 and
// XFS). -only
// density, run only when asked for because it is long, creates -density VMs of
// 512 MiB that sleep when idle under a 24 GiB memory budget and requests each
// by its URL; -only writeback measures the host disk writes of a busy
// guest's RAM in a file (--suspend on) against anonymous RAM. It needs root and the minimal image (`make bench` builds it); VMs
// run in a network namespace of its own with no route out.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/netns"
)

func main() {
	only := flag.String("only", "", "run one benchmark: disk, boot, api, create, targets, edge, deploy, console, heal, suspend, checkpoint, writeback or density (writeback and density run only when named)")
	cycles := flag.Int("cycles", 10, "suspend/wake cycles per guest size (-only suspend)")
	density := flag.Int("density", 200, "VMs the density bench creates")
	densityBudget := flag.Int("density-budget", 24<<10, "the density bench's memory budget for VMs in MiB (capped at the host's memory)")
	densityIdle := flag.Duration("density-suspend-after", 10*time.Second, "the density bench's VMs' --suspend-after")
	runs := flag.Int("runs", 5, "boots to time")
	keystrokes := flag.Int("keystrokes", 200, "keystrokes to time per console path")
	flag.Parse()
	if spec := os.Getenv("FCM_BENCH_CLIENTS"); spec != "" { // the console bench's clients
		if err := benchClients(spec); err != nil {
			fmt.Fprintf(os.Stderr, "bench clients: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if netns.Current() == "" {
		code, err := netns.Reexec("fcm-bench")
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		os.Exit(code)
	}
	if err := cgroup.EnsureMounted(); err != nil { // ip netns exec hides them
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
	ctx := context.Background()
	var boots []bootSample // the boot bench's, for the targets'
	if *only == "" || *only == "disk" {
		fmt.Println("== clone of a 2 GiB base image")
		if err := runDiskBench(ctx, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench: disk: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "boot" {
		fmt.Println("== boot to SSH, power-off, memory (QEMU, 1 vCPU, 512 MiB)")
		var err error
		if boots, err = runBootBench(ctx, os.Stdout, *runs); err != nil {
			fmt.Fprintf(os.Stderr, "bench: boot: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "api" {
		fmt.Println("== API")
		if err := runListBench(os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench: api: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "create" {
		fmt.Println("== create")
		if err := runCreateBench(os.Stdout, *runs); err != nil {
			fmt.Fprintf(os.Stderr, "bench: create: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "targets" {
		fmt.Println("== targets (one run; create overhead = Manager.Create with a no-op Ready, the guest's boot not counted)")
		if err := runTargetsBench(ctx, os.Stdout, boots); err != nil {
			fmt.Fprintf(os.Stderr, "bench: targets: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "edge" {
		fmt.Println("== edge: HTTPS through Caddy")
		if err := runEdgeBench(os.Stdout, 3); err != nil {
			fmt.Fprintf(os.Stderr, "bench: edge: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "deploy" {
		fmt.Println("== deploy: git push into a VM (QEMU)")
		if err := runDeployBench(os.Stdout, 3); err != nil {
			fmt.Fprintf(os.Stderr, "bench: deploy: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "console" {
		fmt.Println("== console: fcm console vs ssh to the same VM (QEMU)")
		if err := runConsoleBench(os.Stdout, *keystrokes); err != nil {
			fmt.Fprintf(os.Stderr, "bench: console: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "heal" {
		fmt.Println("== self-healing: a host restart with 20 VMs serving apps, a hypervisor killed (QEMU, real daemon)")
		if err := runHealBench(ctx, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench: heal: %v\n", err)
			os.Exit(1)
		}
		fmt.Println()
	}
	if *only == "" || *only == "suspend" {
		fmt.Printf("== suspend and wake: %d cycles per guest size, wakes by a request through Caddy, cold boots beside them (QEMU, real daemon)\n", *cycles)
		if err := runSuspendBench(ctx, os.Stdout, *cycles); err != nil {
			fmt.Fprintf(os.Stderr, "bench: suspend: %v\n", err)
			os.Exit(1)
		}
	}
	if *only == "" || *only == "checkpoint" {
		fmt.Printf("== checkpoints, restores and forks: %d checkpoints per amount written, on ext4 (the XFS store in a loop file) and on XFS (QEMU, a real VM)\n", *cycles)
		if err := runCheckpointBench(ctx, os.Stdout, *cycles); err != nil {
			fmt.Fprintf(os.Stderr, "bench: checkpoint: %v\n", err)
			os.Exit(1)
		}
	}
	if *only == "writeback" {
		fmt.Println("== write-back: the host disk writes of a guest's RAM in a file (--suspend on) against anonymous RAM (off), the guest busy (QEMU, real daemon)")
		if err := runWritebackBench(ctx, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench: writeback: %v\n", err)
			os.Exit(1)
		}
	}
	if *only == "density" {
		fmt.Printf("== density: %d VMs of 512 MiB that sleep when idle, each requested by its URL (QEMU, real daemon)\n", *density)
		if err := runDensityBench(ctx, os.Stdout, densityOpts{n: *density, budgetMiB: *densityBudget, suspendAfter: *densityIdle}); err != nil {
			fmt.Fprintf(os.Stderr, "bench: density: %v\n", err)
			os.Exit(1)
		}
	}
}
