package qemu

import (
	"io"
	"log/slog"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm/vmmtest"
)

// TestAdopt_AliveButNotAnswering (M4): a QEMU alive with this VM's QMP socket
// on its command line is never reported gone; Start boots no second one.
func TestAdopt_AliveButNotAnswering(t *testing.T) {
	d := &Driver{binary: "/bin/false", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	vmmtest.AdoptAliveButNotAnswering(t, d, vmmtest.Files{PIDFile: PIDFile, Socket: QMPSocket,
		Marker: func(sock string) string { return "unix:" + sock + ",server=on,wait=off" }}) // as QEMU's -qmp argument
}
