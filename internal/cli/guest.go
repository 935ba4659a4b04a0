//go:build linux

package cli

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/buildpack"
	"github.com/fcmhost/fcm/internal/guestinit"
	"github.com/fcmhost/fcm/internal/release"
	"github.com/fcmhost/fcm/internal/supervisor"
	"github.com/spf13/cobra"
)

// newGuestCmd holds what runs inside a VM (fcm is the guest's init too); the
// daemon calls these over SSH.
func newGuestCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "guest", Short: "Commands run inside a VM", Hidden: true}
	cmd.AddCommand(&cobra.Command{
		Use:   "supervise",
		Short: "Run the app's processes and the proxy on its port (started by init)",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return supervisor.Run(cmd.Context()) },
	}, &cobra.Command{
		Use:   "deploy",
		Short: "Build a pushed tree (a request line, then a tar, on stdin) and switch to it",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			err := buildpack.Deploy(cmd.Context(), os.Stdin, os.Stdout)
			var be *buildpack.Error
			if errors.As(err, &be) {
				fmt.Fprintf(os.Stdout, " !     %s\n", be.Msg)
				return exitCode(1)
			}
			return err
		},
	}, &cobra.Command{
		Use:   "restart",
		Short: "Start the current release again and switch to it",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := supervisor.Call(cmd.Context(), supervisor.Request{Op: "restart"}, func(l string) { fmt.Println(l) })
			if err != nil {
				return err
			}
			if r.Error != "" {
				return errors.New(r.Error)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "resumed",
		Short: "Set the clock and reseed the random pool after the VM was woken (the daemon runs it)",
		Long: `Prints "ready", then reads one line from the daemon: the host's time in
Unix nanoseconds and 64 random bytes in hex; sets the clock to it and mixes the
bytes into the kernel's random pool.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Print("ready\n")
			var ns int64
			var seedHex string
			if _, err := fmt.Fscanln(os.Stdin, &ns, &seedHex); err != nil {
				return fmt.Errorf("read the host's time: %w", err)
			}
			seed, err := hex.DecodeString(seedHex)
			if err != nil {
				return fmt.Errorf("seed: %w", err)
			}
			return guestinit.Resumed(time.Unix(0, ns), seed)
		},
	}, &cobra.Command{
		Use:   "ps",
		Short: "Print the app's processes as JSON",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := supervisor.Call(cmd.Context(), supervisor.Request{Op: "ps"}, nil)
			if err != nil {
				return err
			}
			return json.NewEncoder(os.Stdout).Encode(r.PS)
		},
	}, &cobra.Command{
		Use:                "run -- COMMAND [ARG...]",
		Short:              "Run a one-off command in the current release's directory and environment",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			return guestRun(args)
		},
	})
	return cmd
}

func guestRun(args []string) error {
	if len(args) == 0 {
		return errors.New("nothing to run")
	}
	data, err := os.ReadFile(release.Current)
	if err != nil {
		return errors.New("no release yet: deploy with git push first")
	}
	var spec release.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	c := exec.Command("/bin/bash", "-c", `exec "$@"`, "fcm-run")
	c.Args = append(c.Args, args...)
	c.Dir = release.BuildDir(spec.Build)
	c.Env = supervisor.Env(spec, "run")
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: release.UID, Gid: release.GID}}
	err = c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return exitCode(ee.ExitCode())
	}
	return err
}
