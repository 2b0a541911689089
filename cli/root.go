package cli

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRoot(a *App) *cobra.Command {
	root := &cobra.Command{
		Use:   "stem",
		Short: "Task-queue workers with an operator control plane and a systemd-first daemon toolkit",
		Long: `stem runs task workers and lets operators see and steer them.

Producers enqueue tasks (stem enqueue); workers (stem worker run) claim them
from the broker in batches, run them with bounded concurrency, retry failures
with exponential backoff and keep their state in the result backend
(stem task status).

Configuration comes from flags, then STEM_* environment variables, then the
env file (--env-file / STEM_ENV_FILE), then defaults. Each flag's help names
the variable it overrides. Exit codes: 'stem exit-codes'.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%v", err)
	})
	pf := root.PersistentFlags()
	addVarFlag(pf, "STEM_ENV_FILE", 's', "env file to read (process environment wins over it)")
	addVarFlag(pf, "STEM_LOG_LEVEL", 's', "log level: error, warn, info, debug")
	addVarFlag(pf, "STEM_LOG_FORMAT", 's', "log format: auto, text, json, journal")

	worker := &cobra.Command{Use: "worker", Short: "Run, inspect and steer workers"}
	task := &cobra.Command{Use: "task", Short: "Read task states"}
	root.AddCommand(worker, task, newEnqueueCmd(a), newVersionCmd(), newExitCodesHelp(), newRoutingCmd(a), newUnitsCmd(a))
	worker.AddCommand(newWorkerRunCmd(a), newWorkerPingCmd(a), newWorkerInspectCmd(a), newWorkerStatsCmd(a),
		newWorkerShutdownCmd(a), newWorkerRevokeCmd(a), newWorkerAutoscaleCmd(a), newWorkerPauseCmd(a, true), newWorkerPauseCmd(a, false), newWorkerStatusCmd(a),
		newMultiCmd(a), newHealthcheckCmd(a), newDiagnoseCmd(a))
	task.AddCommand(newTaskStatusCmd(a))
	return root
}

// addBrokerFlags adds the connection flags shared by commands that talk to
// the broker.
func addBrokerFlags(fs *pflag.FlagSet) {
	addVarFlag(fs, "STEM_BROKER_URL", 's', "broker URL")
	addVarFlag(fs, "STEM_RESULT_BACKEND_URL", 's', "result backend URL (default: the broker URL)")
	addVarFlag(fs, "STEM_WORKER_NAMESPACE", 's', "namespace (key prefix) of the deployment")
}
