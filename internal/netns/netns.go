// Package netns runs a program inside a fresh network namespace with no route out,
// for fcm's end-to-end tests and benchmarks: the bridge, taps and VMs they make
// live there, and nothing they send can reach the host's real network.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// envVar is set in the re-executed program to the namespace's name.
const envVar = "FCM_NETNS"

// Current returns the namespace this program was re-executed in, or "".
func Current() string { return os.Getenv(envVar) }

// Reexec runs this program again, with the same arguments, inside a new network
// namespace whose only interface is lo (up), and returns its exit code. The
// namespace is deleted afterwards, and with it every tap and bridge made in it.
// Only root can do this.
func Reexec(prefix string) (int, error) {
	if os.Geteuid() != 0 {
		return 1, errors.New("needs root: network namespaces, bridges, taps and VMs (run with sudo)")
	}
	name := fmt.Sprintf("%s-%d", prefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return 1, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	defer exec.Command("ip", "netns", "delete", name).Run()
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("lo up in %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, self}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envVar+"="+name)
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}
