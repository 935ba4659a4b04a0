package guestinit

import (
	"bytes"
	"io"
	"log"
	"strings"
	"testing"
)

func TestWatchSSHD_LogsListeningOnce(t *testing.T) {
	var out bytes.Buffer
	log.SetOutput(&out)
	defer log.SetOutput(io.Discard)
	sshd := "Server listening on 0.0.0.0 port 22.\nServer listening on :: port 22.\nAccepted publickey for root\n"
	watchSSHD(io.NopCloser(strings.NewReader(sshd)))
	if n := strings.Count(out.String(), "sshd listening"); n != 1 {
		t.Errorf("%d 'sshd listening' stages logged, want 1:\n%s", n, out.String())
	}
	out.Reset()
	watchSSHD(io.NopCloser(strings.NewReader("error: Bind to port 22 failed\n")))
	if strings.Contains(out.String(), "sshd listening") {
		t.Errorf("a sshd that did not listen logged the stage:\n%s", out.String())
	}
}
