package cli

import (
	"github.com/fcmhost/fcm/internal/guestinit"
	"github.com/spf13/cobra"
)

// newGuestCmd holds what runs inside a VM (fcm is the guest's init too).
func newGuestCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "guest", Short: "Commands run inside a VM", Hidden: true}
	cmd.AddCommand(&cobra.Command{
		Use:   "placeholder",
		Short: "Serve the 'no app yet' page on port 3000",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return guestinit.ServePlaceholder(cmd.Context()) },
	})
	return cmd
}
