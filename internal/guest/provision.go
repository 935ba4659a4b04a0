package guest

import (
	"context"
	"fmt"

	"github.com/fcmhost/fcm/internal/ext4"
	"golang.org/x/crypto/ssh"
)

// Identity is what a VM's disk gets before its first boot.
type Identity struct {
	AuthorizedKey ssh.PublicKey // the daemon's key: root may log in with it
	HostKeyPEM    []byte        // the VM's own SSH host key (private, OpenSSH PEM)
	HostKey       ssh.PublicKey // its public half, which the daemon pins
}

// NewIdentity makes a fresh host key for a VM that authorizes the daemon's key.
func NewIdentity(daemonKey ssh.PublicKey) (*Identity, error) {
	pemBytes, signer, err := NewKey()
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return &Identity{AuthorizedKey: daemonKey, HostKeyPEM: pemBytes, HostKey: signer.PublicKey()}, nil
}

// Provision writes the identity into the VM's ext4 disk image, unmounted.
func Provision(ctx context.Context, disk string, id *Identity) error {
	files := []ext4.File{
		{Path: "/root/.ssh", Dir: true, Mode: 0o700},
		{Path: "/root/.ssh/authorized_keys", Data: ssh.MarshalAuthorizedKey(id.AuthorizedKey), Mode: 0o600},
		{Path: "/etc/ssh/ssh_host_ed25519_key", Data: id.HostKeyPEM, Mode: 0o600},
		{Path: "/etc/ssh/ssh_host_ed25519_key.pub", Data: ssh.MarshalAuthorizedKey(id.HostKey), Mode: 0o644},
	}
	if err := ext4.Write(ctx, disk, files); err != nil {
		return fmt.Errorf("provision keys: %w", err)
	}
	return nil
}
