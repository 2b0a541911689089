package cli

import (
	"github.com/spf13/cobra"
)

// addDaemonCommands registers the daemon-toolkit commands (worker multi,
// healthcheck, diagnose, routing). This file belongs to that toolkit.
//
// None of these commands needs the broker (diagnose --connect aside). Like
// every command they resolve their settings through App.env.
func addDaemonCommands(a *App, root, worker *cobra.Command) {
	root.AddCommand(newRoutingCmd(a))
	worker.AddCommand(newMultiCmd(a), newHealthcheckCmd(a), newDiagnoseCmd(a))
}
