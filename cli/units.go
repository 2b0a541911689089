package cli

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/units"
)

// unitsOptions are the flags shared by `units generate` and `units
// install`: what the units look like and the settings of the nodes named
// with --node (every one of them gets the same settings; run the command
// once per group of nodes that differ).
type unitsOptions struct {
	nodes         []string
	queues        []string
	broadcasts    []string
	concurrency   int
	autoscale     string
	env           []string
	binary        string
	user          string
	group         string
	unitDir       string
	shutdownGrace time.Duration
	watchdog      time.Duration
}

func newUnitsCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "units",
		Short: "Generate and install systemd units for worker nodes",
		Long: `Generate and install the systemd units that run stem workers:

  stem-worker@.service   a template: stem-worker@alpha.service runs node alpha
                         (Type=notify, watchdog, healthcheck after start,
                         reload = warm restart, hardened sandbox)
  stem-workers.target    every node: systemctl restart stem-workers.target
  /etc/stem/nodes/N.env  a node's settings (queues, broadcasts, concurrency,
                         autoscale bounds, extra variables), read after
                         /etc/stem/stem.env

The packages ship the template and the target; 'stem units install' adds
nodes. See docs/install.md.`,
	}
	cmd.AddCommand(newUnitsGenerateCmd(a), newUnitsInstallCmd(a))
	return cmd
}

func (o *unitsOptions) addFlags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringArrayVar(&o.nodes, "node", nil, "node to render (repeatable); its unit is stem-worker@NODE.service")
	fs.StringSliceVar(&o.queues, "queue", nil, "queue or routing alias the nodes consume (repeatable, or comma-separated; priority order)")
	fs.StringSliceVar(&o.broadcasts, "broadcast", nil, "broadcast channel or routing alias the nodes join (repeatable)")
	addVarFlag(fs, "STEM_ROUTING_CONFIG", 's', "routing file that resolves --queue and --broadcast aliases")
	fs.IntVar(&o.concurrency, "concurrency", 0, "most tasks each node runs at once (default: the worker's)")
	fs.StringVar(&o.autoscale, "autoscale", "", "autoscale bounds MIN:MAX of each node")
	fs.StringArrayVar(&o.env, "env", nil, "extra variable KEY=VALUE in each node's env file (repeatable)")
	fs.StringVar(&o.binary, "binary", units.DefaultBinary, "absolute path of the stem executable the units run")
	fs.StringVar(&o.user, "user", units.DefaultUser, "user (and --group) that runs the workers")
	fs.StringVar(&o.group, "group", units.DefaultGroup, "group that runs the workers and may read the env files")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", units.DefaultShutdownGrace, "soft-shutdown grace period passed to the worker; TimeoutStopSec= is this plus 60s")
	fs.DurationVar(&o.watchdog, "watchdog", units.DefaultWatchdog, "WatchdogSec=: systemd kills a node whose main loop stops answering for this long")
}

// spec builds the units.Spec of the command line. Bad values are usage
// errors (exit 64); a bad routing file is a configuration error (78).
func (o *unitsOptions) spec(a *App, cmd *cobra.Command) (units.Spec, error) {
	s := units.Spec{
		Binary: o.binary, User: o.user, Group: o.group, UnitDir: o.unitDir,
		ShutdownGrace: o.shutdownGrace, Watchdog: o.watchdog,
	}
	env, err := a.env(cmd)
	if err != nil {
		return s, err
	}
	queues, broadcasts, err := (&multiOptions{queues: o.queues, broadcasts: o.broadcasts}).resolveRouting(env)
	if err != nil {
		return s, err
	}
	var scale *units.Autoscale
	if o.autoscale != "" {
		lo, hi, ok := strings.Cut(o.autoscale, ":")
		minN, err1 := strconv.Atoi(strings.TrimSpace(lo))
		maxN, err2 := strconv.Atoi(strings.TrimSpace(hi))
		if !ok || err1 != nil || err2 != nil {
			return s, usageErrorf("--autoscale %q: want MIN:MAX, e.g. 2:16", o.autoscale)
		}
		if missing := missingVars(units.VarAutoscale, units.VarMinConcurrency, units.VarMaxConcurrency); missing != "" {
			return s, usageErrorf("--autoscale: this stem's worker does not read %s yet, so the bounds would do nothing", missing)
		}
		scale = &units.Autoscale{Min: minN, Max: maxN}
	}
	var extra []units.EnvVar
	for _, kv := range o.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return s, usageErrorf("--env %q: want KEY=VALUE", kv)
		}
		extra = append(extra, units.EnvVar{Key: k, Value: v})
	}
	if len(o.nodes) == 0 && (len(queues)+len(broadcasts)+len(extra) > 0 || o.concurrency != 0 || scale != nil) {
		return s, usageErrorf("--queue, --broadcast, --concurrency, --autoscale and --env set nodes' settings: name the nodes with --node")
	}
	for _, n := range o.nodes {
		s.Nodes = append(s.Nodes, units.Node{Name: n, Queues: queues, Broadcasts: broadcasts, Concurrency: o.concurrency, Autoscale: scale, Env: extra})
	}
	if err := s.WithDefaults().Validate(); err != nil {
		return s, usageErrorf("%v", err)
	}
	return s, nil
}

// missingVars returns the keys that config.Vars does not document, joined
// with " and ", or "".
func missingVars(keys ...string) string {
	var out []string
	for _, k := range keys {
		if !slices.ContainsFunc(config.Vars, func(v config.Var) bool { return v.Key == k }) {
			out = append(out, k)
		}
	}
	return strings.Join(out, " and ")
}
