//go:build !linux

package cli

import "github.com/spf13/cobra"

// hostCommands are none off Linux: this build is the client only.
func hostCommands() []*cobra.Command { return nil }

// imageHostCommands are none off Linux: fcm image build runs on the host.
func imageHostCommands() []*cobra.Command { return nil }
