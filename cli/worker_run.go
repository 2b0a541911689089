package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/tasks"
	"github.com/stemhq/stem/worker"
)

func newWorkerRunCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a worker in the foreground",
		Long: `Run a worker in the foreground until it is told to stop.

The worker claims tasks from its queues in batches, runs at most
--concurrency of them at once (plus --prefetch claimed ahead), retries
failures with exponential backoff, and records every state in the result
backend. It runs the built-in tasks (stem.echo, stem.sleep, stem.fail), the
commands of the tasks file, and any handlers compiled into this binary.

Signals: SIGTERM = warm shutdown (stop fetching, finish running tasks),
SIGINT = soft (cancel running tasks and hand them back; hard after
--shutdown-grace), SIGQUIT = hard (hand running tasks back at once, without
counting an attempt). A second signal escalates one step.

If the broker is unreachable at start, the worker retries with backoff and
logs each attempt.`,
		Example: `  stem worker run --node alpha --queue default --queue critical --concurrency 8
  STEM_BROKER_URL=redis://:secret@10.0.0.5:6379/0 stem worker run --tasks-file /etc/stem/tasks.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runWorker(cmd)
		},
	}
	fs := cmd.Flags()
	addBrokerFlags(fs)
	for _, f := range workerRunFlags {
		addVarFlag(fs, f.key, f.kind, f.help)
	}
	fs.String("control-namespace", "", "control namespace (default: the worker namespace)")
	bindEnv(fs, "control-namespace", "STEM_CONTROL_NAMESPACE")
	return cmd
}

// workerRunFlags are the variables `worker run` takes as flags, in help
// order, with the flag's kind (s string, i int, d duration, b bool, l list)
// and help; the flag's name is the variable's in config.Vars.
var workerRunFlags = []struct {
	key  string
	kind byte
	help string
}{
	{"STEM_WORKER_NODE", 's', "node name; the worker id is <node>@<hostname>"},
	{"STEM_WORKER_QUEUES", 'l', "queue to consume (repeatable, or comma-separated; priority order)"},
	{"STEM_WORKER_CONCURRENCY", 'i', "most tasks run at once"},
	{"STEM_WORKER_PREFETCH", 'i', "tasks claimed ahead of free slots"},
	{"STEM_WORKER_LEASE", 'd', "visibility timeout of claimed tasks"},
	{"STEM_WORKER_HEARTBEAT", 'd', "registry heartbeat interval"},
	{"STEM_WORKER_SHUTDOWN_GRACE", 'd', "soft shutdown grace period before a hard stop"},
	{"STEM_TASKS_FILE", 's', "YAML file of exec tasks"},
	{"STEM_RESULT_TTL", 'd', "how long task states are kept"},
	{"STEM_REVOKE_STORE_URL", 's', "durable revoke store (default: the result backend URL)"},
	{"STEM_REVOKE_SYNC_INTERVAL", 'd', "how often to re-read revokes and paused queues"},
	{"STEM_WORKER_AUTOSCALE", 'b', "move the concurrency between --min-concurrency and --max-concurrency"},
	{"STEM_WORKER_MIN_CONCURRENCY", 'i', "autoscale lower bound"},
	{"STEM_WORKER_MAX_CONCURRENCY", 'i', "autoscale upper bound (default: --concurrency)"},
	{"STEM_WORKER_SCALE_UP_STEP", 'i', "slots added per autoscale decision"},
	{"STEM_WORKER_SCALE_DOWN_STEP", 'i', "slots removed per autoscale decision"},
	{"STEM_WORKER_IDLE_PERIOD", 'd', "idle time before scaling down"},
	{"STEM_WORKER_AUTOSCALE_TICK", 'd', "how often the autoscaler decides"},
	{"STEM_WORKER_SCALE_UP_COOLDOWN", 'd', "least time between two scale-ups"},
	{"STEM_WORKER_SCALE_DOWN_COOLDOWN", 'd', "least time between two scale-downs"},
	{"STEM_WORKER_MAX_TASKS_PER_CHILD", 'i', "recycle an isolation child after this many tasks (0: never)"},
	{"STEM_WORKER_MAX_MEMORY_PER_CHILD", 's', "recycle an isolation child above this RSS after a task (512MiB, 1GiB)"},
	{"STEM_WORKER_TERMINATE_GRACE", 'd', "time a terminated isolated or exec task has before its process group is killed"},
	{"STEM_UNKNOWN_TASK_TTL", 'd', "hand back tasks no handler here knows, for a worker that knows them; dead-letter them after this long"},
	{"STEM_METRICS_ADDR", 's', "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464"},
	{"STEM_WORKER_SIGNALS", 's', "signal to shutdown-mode mapping, e.g. " + DefaultSignals},
	{"STEM_WORKER_PIDFILE", 's', "write this pidfile (created exclusively, locked) while running; removed at exit"},
}

// buildHandlers returns the registry a worker runs: built-ins, the app's
// compiled handlers, and the tasks file's exec tasks.
func (a *App) buildHandlers(c config.Config) (*worker.Registry, error) {
	reg, err := a.childHandlers()
	if err != nil {
		return nil, err
	}
	if c.TasksFile != "" {
		f, err := tasks.Load(c.TasksFile)
		if err != nil {
			return nil, err
		}
		if err := f.Register(reg, tasks.ExecOptions{Environ: a.environ(), KillGrace: c.TerminateGrace}); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// childHandlers is the registry of an isolation child: the built-in tasks
// and the program's own handlers (exec tasks never run in a child).
func (a *App) childHandlers() (*worker.Registry, error) {
	reg := worker.NewRegistry()
	if err := tasks.RegisterBuiltins(reg); err != nil {
		return nil, err
	}
	for _, name := range a.handlers.Names() {
		h, _ := a.handlers.Lookup(name)
		if err := reg.Register(h.Name, h.Run, h.Options); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// DefaultSignals is the default signal → shutdown mode mapping.
const DefaultSignals = "TERM=warm,INT=soft,QUIT=hard"

func (a *App) runWorker(cmd *cobra.Command) error {
	c, l, err := a.config(cmd)
	if err != nil {
		return err
	}
	log, err := a.logger(cmd, c)
	if err != nil {
		return err
	}
	routeRedisLogs(log)
	handlers, err := a.buildHandlers(c)
	if err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	broadcasts, _, _ := l.Get("STEM_WORKER_BROADCASTS")
	daemon.ProtectInheritedPidfile(func(k string) string { v, _ := a.lookupEnv(k); return v })
	if c.Pidfile != "" {
		pf, err := daemon.CreatePidfile(c.Pidfile, os.Getpid())
		var exists *daemon.ExistsError
		var refused *daemon.RefusedError
		switch {
		case errors.As(err, &exists):
			return withCode(ExitFailure, fmt.Errorf("already running: %w", err))
		case errors.As(err, &refused):
			return withCode(ExitRefused, err)
		case err != nil:
			return withCode(ExitConfig, err)
		}
		defer func() {
			if err := pf.Remove(); err != nil {
				log.WithError(err).Warn("could not remove the pidfile")
			}
		}()
	}

	signalModes, err := daemon.ParseSignals(c.Signals, worker.ParseMode)
	if err != nil {
		_, from, _ := l.Get("STEM_WORKER_SIGNALS")
		return &stem.ConfigError{Key: from, Value: c.Signals, Msg: err.Error()}
	}
	// Signals are caught from the start, so a SIGTERM during the broker
	// retry loop ends it cleanly. SIGHUP, unless mapped, is a warm restart
	// (systemctl reload): see restartExit.
	policy := daemon.NewShutdown(signalModes, worker.Warm, worker.Hard)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, policy.Signals()...)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	// The signal loop lives as long as runWorker: a signal before the
	// worker exists cancels the start-up (broker retries) and is applied
	// to the worker as soon as it exists, and later signals escalate.
	wCh := make(chan *worker.Worker, 1)
	loopDone := make(chan struct{})
	defer close(loopDone)
	go func() {
		var target *worker.Worker
		for {
			select {
			case target = <-wCh:
				if m := policy.Mode(); m != 0 {
					target.Shutdown(m)
				}
			case s := <-sigs:
				m, restart := policy.Signal(s)
				if restart {
					log.Info("SIGHUP: warm restart (running tasks finish, then the service manager starts a new worker)")
				}
				log.WithFields(logrus.Fields{logging.FieldSignal: s.String(), logging.FieldMode: m.String()}).Info("signal received")
				if target == nil {
					cancel()
					continue
				}
				target.Shutdown(m)
			case <-loopDone:
				return
			}
		}
	}()

	log.WithFields(logrus.Fields{
		logging.FieldURL: stem.RedactURL(c.BrokerURL), "namespace": c.Namespace, "signals": c.Signals + " (a second signal escalates)",
	}).Info("stem worker starting")
	// A start cancelled by a signal ends as the signal asks.
	startErr := func(err error) error {
		if ctx.Err() != nil {
			return restartExit(policy, nil, log)
		}
		return err
	}
	eng, err := openEngineRetrying(ctx, c, log)
	if err != nil {
		return startErr(err)
	}
	defer eng.Close()
	// Like the broker, a revoke store that cannot be reached yet is waited
	// for: the worker claims nothing until it has read its revokes.
	revokes, err := openRetrying(ctx, log, "revoke store", revokeStoreURL(l), func() (revoke.Store, error) {
		return openRevokeStore(ctx, c, l, log)
	})
	if err != nil {
		return startErr(err)
	}
	defer revokes.Close()

	metrics := worker.NewMetrics()
	if c.MetricsAddr != "" {
		stop, err := serveMetrics(c.MetricsAddr, metrics, log)
		if err != nil {
			_, from, _ := l.Get("STEM_METRICS_ADDR")
			return &stem.ConfigError{Key: from, Value: c.MetricsAddr, Msg: err.Error()}
		}
		defer stop()
	}
	w, err := worker.New(worker.Config{
		Broker: eng.Broker, Results: eng.Results, Registry: eng.Registry, Handlers: handlers,
		Node: c.Node, Hostname: hostname, Namespace: c.ControlNamespace, Queues: c.Queues,
		Concurrency: c.Concurrency, Prefetch: c.Prefetch, Lease: c.Lease, Heartbeat: c.Heartbeat,
		ShutdownGrace: c.ShutdownGrace, Logger: log, Version: Version, UnknownTaskTTL: c.UnknownTaskTTL,
		// Hard shutdown waits long enough for exec tasks' process groups to
		// be killed (SIGTERM, then SIGKILL after the terminate grace).
		HardWait: c.TerminateGrace + time.Second,
		Control:  eng.Control, Pauses: eng.Pauses, Revokes: revokes, RevokeSync: c.RevokeSync, SigningKey: []byte(c.SigningKey),
		MaxAge: c.ControlMaxAge, RevokeStoreURL: revokeStoreURL(l), PauseStoreURL: c.BrokerURL,
		Broadcasts: splitList(broadcasts),
		Isolation: worker.IsolationConfig{
			MaxTasksPerChild: c.MaxTasksPerChild, MaxMemoryPerChildBytes: c.MaxChildMemory, TerminateGrace: c.TerminateGrace,
			Stderr: cmd.ErrOrStderr(),
		},
		Autoscale: worker.AutoscaleConfig{
			Enabled: c.Autoscale, Min: c.MinConcurrency, Max: c.MaxConcurrency, ScaleUpStep: c.ScaleUpStep, ScaleDownStep: c.ScaleDownStep,
			IdlePeriod: c.IdlePeriod, Tick: c.AutoscaleTick, UpCooldown: c.UpCooldown, DownCooldown: c.DownCooldown,
		},
		Metrics: metrics,
	})
	if err != nil {
		return withCode(ExitConfig, err)
	}
	wCh <- w
	svc := &daemon.ServiceNotifier{N: daemon.NewNotifier(), Service: w, Grace: c.ShutdownGrace, Log: log,
		ReadyFields: logrus.Fields{"tasks": len(handlers.Names())},
		Status: func(prefix string) string {
			st := w.Stats()
			return fmt.Sprintf("%s: %d/%d busy; queues %s", prefix, st.InFlight, st.ActiveConcurrency, strings.Join(c.Queues, ","))
		}}
	svcCtx, stopSvc := context.WithCancel(context.Background())
	defer stopSvc()
	go svc.Run(svcCtx)
	// A signal that arrived before the worker existed cancelled ctx: Run
	// then stops at once (warm).
	return restartExit(policy, w.Run(ctx), log)
}
