package cli

import "github.com/spf13/cobra"

// addDaemonCommands registers the daemon-toolkit commands (worker multi,
// healthcheck, diagnose, routing). This file belongs to that toolkit.
func addDaemonCommands(a *App, root, worker *cobra.Command) {}
