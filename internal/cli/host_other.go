//go:build !linux

package cli

import "github.com/spf13/cobra"

// hostCommands are none off Linux: this build is the client only.
func hostCommands() []*cobra.Command { return nil }
