package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/diagnose"
	"github.com/stemhq/stem/engine"
)

type diagnoseOptions struct {
	logfile string
	jsonOut bool
	connect bool
}

func newDiagnoseCmd(a *App) *cobra.Command {
	o := &diagnoseOptions{}
	cmd := &cobra.Command{
		Use:   "diagnose",
		Short: "Check a node's local setup: directories, pidfile, env file, command, broker URL",
		Long: `Run local checks and print one line per check, [OK], [WARN] or [ERR]:

  pid-directory, log-directory   exist and are writable (or can be created)
  pidfile, process               the pidfile parses; its process is the node,
                                 or the pidfile is stale, or the PID was reused
  logfile                        is writable
  env-file                       parses (errors give the line)
  env-file-permissions           readable by others while holding a secret
  environment-secrets            a STEM_* variable of the environment holds a
                                 secret (named, never shown)
  worker-command                 STEM_WORKER_COMMAND parses and is executable
  broker-url                     STEM_BROKER_URL is well-formed
  broker-connection              with --connect only: the broker answers
  broker-durability              with --connect only: the broker keeps tasks
                                 across a crash (an error when it does not:
                                 Redis without AOF, memory://, ...)

The pidfile and logfile may be templates (%n is --node). Variables are read
from the environment first, then the env file. No network call is made
without --connect.

Exit 1 when any check is an error, else 0. --json prints {"checks": [{"name",
"level" (info, warning, error), "message"}], "errors", "warnings"}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A bad env file is not an error here: diagnose reports it.
			env, _ := a.env(cmd)
			node, _ := env.get("STEM_WORKER_NODE")
			v := daemon.TemplateVars(node, 0, time.Now())
			in := diagnose.Input{
				EnvFile:          env.file,
				LoadEnvFile:      config.LoadEnvFile,
				Getenv:           a.lookupEnv,
				Environ:          a.environ,
				DefaultCommand:   defaultCommandText(),
				DefaultBrokerURL: config.DefaultBrokerURL(a.lookupEnv),
				CheckBrokerURL:   func(raw string) error { return stem.CheckURL(raw, engine.Schemes) },
				RedactURL:        stem.RedactURL,
			}
			var err error
			if pidfile, _ := env.get("STEM_WORKER_PIDFILE"); pidfile != "" {
				if in.Pidfile, err = daemon.ExpandPath("pidfile", pidfile, v); err != nil {
					return err
				}
			}
			if o.logfile != "" {
				if in.Logfile, err = daemon.ExpandPath("logfile", o.logfile, v); err != nil {
					return err
				}
			}
			if o.connect {
				in.Connect = func(ctx context.Context, raw string) (*broker.Durability, error) {
					vars := map[string]string{"STEM_BROKER_URL": raw}
					if v, ok := env.get("STEM_REDIS_REQUIRE_AOF"); ok {
						vars["STEM_REDIS_REQUIRE_AOF"] = v
					}
					c, err := config.Load(config.Lookup{config.MapSource("diagnose", vars)}, 1)
					if err != nil {
						return nil, err
					}
					eng, err := openEngine(ctx, c)
					if err != nil {
						return nil, err
					}
					defer eng.Close()
					dr, ok := eng.Broker.(broker.DurabilityReporter)
					if !ok {
						return nil, nil
					}
					d, err := dr.Durability(ctx)
					if err != nil {
						return nil, nil // reachable, but cannot tell: a warning
					}
					return &d, nil
				}
			}
			rep := diagnose.Run(cmd.Context(), in)
			out := cmd.OutOrStdout()
			if o.jsonOut {
				if err := writeJSON(out, rep); err != nil {
					return err
				}
			} else {
				for _, c := range rep.Checks {
					fmt.Fprintf(out, "%-6s %s: %s\n", c.Level.Tag(), c.Name, oneLine(c.Message))
				}
			}
			if rep.Errors > 0 {
				return &ExitError{Code: ExitFailure}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	addVarFlag(fs, "STEM_WORKER_PIDFILE", 's', "the node's pidfile (a template: %n is --node)")
	fs.StringVar(&o.logfile, "logfile", "", "the node's logfile (a template)")
	addVarFlag(fs, "STEM_WORKER_NODE", 's', "node name, for %n")
	fs.BoolVar(&o.jsonOut, "json", false, "print the checks as JSON")
	fs.BoolVar(&o.connect, "connect", false, "also connect to the broker")
	return cmd
}

// defaultCommandText is what multi runs without STEM_WORKER_COMMAND.
func defaultCommandText() string {
	exe, err := os.Executable()
	if err != nil {
		exe = "stem"
	}
	return exe + " worker run"
}
