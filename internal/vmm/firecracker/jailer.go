package firecracker

import (
	"fmt"
	"path/filepath"
)

// Jailer runs firecracker through Firecracker's jailer: a chroot per VM under
// ChrootBase, an unprivileged uid/gid, its own cgroup and network namespace
// handling left to the jailer's defaults. The jailer's chroot is
// <ChrootBase>/firecracker/<id>/root; the socket is /run/firecracker.socket in it.
type Jailer struct {
	Binary     string // path of the jailer binary
	UID, GID   int    // the unprivileged user firecracker runs as
	ChrootBase string // default /srv/jailer
}

// Args returns the jailer's command line for VM id running firecracker.
func (j *Jailer) Args(firecracker, id string) []string {
	base := j.ChrootBase
	if base == "" {
		base = defaultBase
	}
	return []string{
		"--id", id,
		"--exec-file", firecracker,
		"--uid", fmt.Sprint(j.UID),
		"--gid", fmt.Sprint(j.GID),
		"--chroot-base-dir", base,
		"--",
		"--api-sock", "/run/" + SocketFile,
	}
}

// ChrootDir is where the jailer puts VM id's root.
func (j *Jailer) ChrootDir(firecracker, id string) string {
	base := j.ChrootBase
	if base == "" {
		base = defaultBase
	}
	return filepath.Join(base, filepath.Base(firecracker), id, "root")
}
