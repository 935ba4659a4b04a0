package cgroup

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// EnsureMounted mounts the host's cgroup hierarchies on /sys/fs/cgroup when
// nothing is there, as pid 1 has them (the same controllers give the same
// hierarchies). `ip netns exec` runs its program in a mount namespace with a
// fresh /sys, which hides them; the mounts made here stay in that namespace.
// On an ordinary host they are already there and it does nothing.
func EnsureMounted() error {
	if entries, _ := os.ReadDir("/sys/fs/cgroup"); len(entries) > 0 {
		return nil
	}
	mounts, err := os.ReadFile("/proc/1/mounts")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || (f[1] != "/sys/fs/cgroup" && !strings.HasPrefix(f[1], "/sys/fs/cgroup/")) {
			continue
		}
		var data []string
		for _, o := range strings.Split(f[3], ",") {
			if !slices.Contains([]string{"rw", "ro", "relatime", "nosuid", "nodev", "noexec"}, o) {
				data = append(data, o)
			}
		}
		os.MkdirAll(f[1], 0o755)
		if err := unix.Mount(f[0], f[1], f[2], 0, strings.Join(data, ",")); err != nil {
			return fmt.Errorf("mount the cgroup hierarchy %s on %s: %w", f[2], f[1], err)
		}
	}
	return nil
}
