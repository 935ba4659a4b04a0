package firecracker

import (
	"io"
	"log/slog"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm/vmmtest"
)

// TestAdopt_AliveButNotAnswering (M4): a Firecracker alive with this VM's API
// socket on its command line is never reported gone; Start boots no second one.
func TestAdopt_AliveButNotAnswering(t *testing.T) {
	d := &Driver{binary: "/bin/false", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	vmmtest.AdoptAliveButNotAnswering(t, d, vmmtest.Files{PIDFile: PIDFile, Socket: SocketFile,
		Marker: func(sock string) string { return sock }}) // as in --api-sock <sock>
}
