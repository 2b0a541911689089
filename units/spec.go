// Package units renders stem's systemd units from a Spec and installs them
// under a root directory.
//
// What it renders (Render):
//
//   - stem-worker@.service, a template unit: Type=notify with a watchdog,
//     a pidfile under RuntimeDirectory=, an ExecStartPost= healthcheck, a
//     warm-restart ExecReload=, a stop timeout longer than the soft-shutdown
//     grace period, and a sandbox that scores at most 1.5 on
//     `systemd-analyze security --offline=true`;
//   - stem-workers.target, which groups the nodes: each node's instance is
//     PartOf= it, so `systemctl restart stem-workers.target` restarts them
//     all, and enabling a node makes the target want it;
//   - for each node, an env file (queues, broadcasts, concurrency, autoscale
//     bounds, extra variables) that the template reads with
//     EnvironmentFile=, and the two symlinks `systemctl enable
//     stem-worker@NODE` would make.
//
// Rendering is pure: the same Spec gives the same bytes (golden tests pin
// them). Every value that lands in a unit file has '%' doubled, so systemd
// never expands a specifier the Spec did not put there on purpose (%i, the
// node). Env files are not specifier-expanded by systemd and are written
// so that systemd and stem's own env-file parser (godotenv) read the same
// values.
//
// Installer writes the files under a root directory (`--root /` is this
// machine).
package units

import (
	"cmp"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Defaults of a Spec; WithDefaults fills them in.
const (
	DefaultBinary        = "/usr/bin/stem"
	DefaultUser          = "stem"
	DefaultGroup         = "stem"
	DefaultEnvFile       = "/etc/stem/stem.env"
	DefaultNodeEnvDir    = "/etc/stem/nodes"
	DefaultUnitDir       = "/etc/systemd/system"
	DefaultName          = "stem"
	DefaultShutdownGrace = 30 * time.Second
	DefaultWatchdog      = 30 * time.Second
	// DefaultStopMargin is what TimeoutStopSec= adds to the shutdown grace
	// period by default: room for the hard stop and the final flush after
	// a soft shutdown's grace period runs out.
	DefaultStopMargin = 60 * time.Second
	// DefaultStartTimeout bounds the start: READY=1 comes only once the
	// broker answers, and the worker retries an unreachable broker.
	DefaultStartTimeout = 2 * time.Minute
)

// Unit names.
const (
	// TemplateUnit is the template service; stem-worker@NODE.service is a node.
	TemplateUnit = "stem-worker@.service"
	// TargetUnit groups the nodes.
	TargetUnit = "stem-workers.target"
)

// The variables a node's env file sets: the worker's own configuration
// variables (see the config package).
const (
	VarQueues         = "STEM_WORKER_QUEUES"
	VarBroadcasts     = "STEM_WORKER_BROADCASTS"
	VarConcurrency    = "STEM_WORKER_CONCURRENCY"
	VarAutoscale      = "STEM_WORKER_AUTOSCALE"
	VarMinConcurrency = "STEM_WORKER_MIN_CONCURRENCY"
	VarMaxConcurrency = "STEM_WORKER_MAX_CONCURRENCY"
)

// ReloadSignal is the signal ExecReload= sends: `stem worker run` answers
// it with a warm restart (stop claiming, let running tasks finish, exit
// with RestartExitStatus), and the unit's RestartForceExitStatus= starts a
// new process, which reads the env files and the tasks file afresh.
const ReloadSignal = "SIGHUP"

// RestartExitStatus is the exit status of `stem worker run` after the warm
// restart that ReloadSignal asks for: 128+1, the shell's way of saying "ended
// by SIGHUP". The unit counts it as a success and restarts on it.
const RestartExitStatus = 129

// Spec describes the units to render. The zero value plus WithDefaults is
// the packaged configuration.
type Spec struct {
	// Binary is the absolute path of the stem executable.
	Binary string
	// User and Group run the worker.
	User, Group string
	// EnvFile is the shared env file every node reads first (optional at
	// run time: a missing file is skipped).
	EnvFile string
	// NodeEnvDir holds one env file per node, NODE.env, read after
	// EnvFile, so a node's settings win over the shared ones.
	NodeEnvDir string
	// UnitDir is where the template and target are installed; the enable
	// symlinks point there.
	UnitDir string
	// Name names the runtime, state and logs directories (/run/NAME,
	// /var/lib/NAME, /var/log/NAME).
	Name string
	// ShutdownGrace is the soft-shutdown grace period passed to `worker
	// run --shutdown-grace`; the unit's stop timeout is larger.
	ShutdownGrace time.Duration
	// StopTimeout is TimeoutStopSec=; it must exceed ShutdownGrace.
	// Default: ShutdownGrace + DefaultStopMargin.
	StopTimeout time.Duration
	// StartTimeout is TimeoutStartSec=.
	StartTimeout time.Duration
	// Watchdog is WatchdogSec=; the worker pings at half of it while its
	// main loop is alive.
	Watchdog time.Duration
	// Nodes are the nodes whose env files and enable links are rendered.
	Nodes []Node
}

// Node is one worker node's settings.
type Node struct {
	// Name is the node name, the instance of stem-worker@NAME.service.
	Name string
	// Queues to consume, in priority order (STEM_WORKER_QUEUES); empty
	// keeps the shared env file's or the worker's default.
	Queues []string
	// Broadcasts are broadcast channels to join (STEM_WORKER_BROADCASTS).
	Broadcasts []string
	// Concurrency is the most tasks run at once (0: unset).
	Concurrency int
	// Autoscale, when set, bounds the autoscaler.
	Autoscale *Autoscale
	// Env are extra variables for this node, written in order after the
	// settings above.
	Env []EnvVar
}

// Autoscale holds autoscaling bounds.
type Autoscale struct {
	Min, Max int
}

// EnvVar is one environment variable.
type EnvVar struct {
	Key, Value string
}

// WithDefaults returns s with every unset field given its default.
func (s Spec) WithDefaults() Spec {
	s.Binary = cmp.Or(s.Binary, DefaultBinary)
	s.User = cmp.Or(s.User, DefaultUser)
	s.Group = cmp.Or(s.Group, DefaultGroup)
	s.EnvFile = cmp.Or(s.EnvFile, DefaultEnvFile)
	s.NodeEnvDir = cmp.Or(s.NodeEnvDir, DefaultNodeEnvDir)
	s.UnitDir = cmp.Or(s.UnitDir, DefaultUnitDir)
	s.Name = cmp.Or(s.Name, DefaultName)
	s.ShutdownGrace = cmp.Or(s.ShutdownGrace, DefaultShutdownGrace)
	s.StopTimeout = cmp.Or(s.StopTimeout, s.ShutdownGrace+DefaultStopMargin)
	s.StartTimeout = cmp.Or(s.StartTimeout, DefaultStartTimeout)
	s.Watchdog = cmp.Or(s.Watchdog, DefaultWatchdog)
	return s
}

var (
	// pathRE: absolute paths without spaces, quotes, backslashes or '$',
	// which ExecStart= would split or expand. '%' is allowed (and doubled).
	pathRE = regexp.MustCompile(`^/[A-Za-z0-9._/+@%:=,-]*$`)
	// nodeRE: what both stem (node names) and systemd (unit instance
	// names) accept without escaping.
	nodeRE    = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	accountRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]*$`)
	envKeyRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// listItemRE is a queue or broadcast name (config.ValidName, ASCII).
	listItemRE = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
)

// reservedVars are set by the unit itself (ExecStart= flags or systemd);
// a node's extra variables may not set them, because they would have no
// effect or break the service.
var reservedVars = map[string]string{
	"STEM_WORKER_NODE":           "the unit passes --node %i",
	"STEM_WORKER_PIDFILE":        "the unit passes --pidfile",
	"STEM_WORKER_SHUTDOWN_GRACE": "the unit passes --shutdown-grace so that TimeoutStopSec= covers it; use the shutdown grace setting of `stem units`",
	"STEM_ENV_FILE":              "the unit reads its env files with EnvironmentFile=",
	"NOTIFY_SOCKET":              "systemd sets it",
	"WATCHDOG_USEC":              "systemd sets it",
	"WATCHDOG_PID":               "systemd sets it",
	"MAINPID":                    "systemd sets it",
	VarQueues:                    "use the queues setting",
	VarBroadcasts:                "use the broadcasts setting",
	VarConcurrency:               "use the concurrency setting",
	VarAutoscale:                 "use the autoscale setting",
	VarMinConcurrency:            "use the autoscale setting",
	VarMaxConcurrency:            "use the autoscale setting",
}

// maxUnitName is systemd's limit on a unit name's length.
const maxUnitName = 255

// Validate reports the first problem of s (after WithDefaults), naming the
// field and the value.
func (s Spec) Validate() error {
	for _, p := range []struct{ field, v string }{
		{"binary", s.Binary}, {"env file", s.EnvFile}, {"node env directory", s.NodeEnvDir}, {"unit directory", s.UnitDir},
	} {
		if !pathRE.MatchString(p.v) || strings.Contains(p.v, "//") || strings.Contains(p.v, "/../") || strings.HasSuffix(p.v, "/..") {
			return fmt.Errorf("%s %q: want a clean absolute path of letters, digits and . _ / + @ %% : = , -", p.field, p.v)
		}
	}
	for _, a := range []struct{ field, v string }{{"user", s.User}, {"group", s.Group}} {
		if !accountRE.MatchString(a.v) || len(a.v) > 32 {
			return fmt.Errorf("%s %q: want a system account name (lower-case letters, digits, _ and -, at most 32)", a.field, a.v)
		}
	}
	if !nodeRE.MatchString(s.Name) || strings.Trim(s.Name, ".") == "" {
		return fmt.Errorf("directory name %q: want letters, digits, '.', '_' and '-'", s.Name)
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"shutdown grace", s.ShutdownGrace}, {"stop timeout", s.StopTimeout}, {"start timeout", s.StartTimeout}, {"watchdog", s.Watchdog}} {
		if d.v <= 0 {
			return fmt.Errorf("%s %s: must be greater than zero", d.field, d.v)
		}
		if d.v%time.Second != 0 {
			return fmt.Errorf("%s %s: must be whole seconds", d.field, d.v)
		}
	}
	if s.StopTimeout <= s.ShutdownGrace {
		return fmt.Errorf("stop timeout %s must exceed the shutdown grace period %s, or systemd kills a soft shutdown before its grace period ends", s.StopTimeout, s.ShutdownGrace)
	}
	if s.Watchdog < 10*time.Second {
		// The liveness probe may take up to 5 s; at half the watchdog
		// period, anything shorter risks killing a healthy worker.
		return fmt.Errorf("watchdog %s: must be at least 10s (the worker's liveness probe can take 5s)", s.Watchdog)
	}
	seen := map[string]bool{}
	for _, n := range s.Nodes {
		if err := n.validate(); err != nil {
			return err
		}
		if seen[n.Name] {
			return fmt.Errorf("node %q: given twice", n.Name)
		}
		seen[n.Name] = true
	}
	return nil
}

func (n Node) validate() error {
	if !nodeRE.MatchString(n.Name) || strings.Trim(n.Name, ".") == "" {
		return fmt.Errorf("node %q: names hold only ASCII letters, digits, '.', '_' and '-' (and not only dots)", n.Name)
	}
	if len("stem-worker@"+n.Name+".service") > maxUnitName {
		return fmt.Errorf("node %q: too long for a unit name (at most %d characters)", n.Name, maxUnitName-len("stem-worker@.service"))
	}
	for _, l := range []struct {
		what  string
		names []string
	}{{"queue", n.Queues}, {"broadcast", n.Broadcasts}} {
		for _, q := range l.names {
			if !listItemRE.MatchString(q) || len(q) > 200 {
				return fmt.Errorf("node %s: %s %q: names hold only letters, digits, dots, underscores, hyphens and colons", n.Name, l.what, q)
			}
		}
	}
	if n.Concurrency < 0 || n.Concurrency > 100000 {
		return fmt.Errorf("node %s: concurrency %d: must be between 1 and 100000", n.Name, n.Concurrency)
	}
	if a := n.Autoscale; a != nil {
		if a.Min < 1 || a.Max < 1 || a.Max > 100000 {
			return fmt.Errorf("node %s: autoscale %d:%d: bounds must be between 1 and 100000", n.Name, a.Min, a.Max)
		}
		if a.Min > a.Max {
			return fmt.Errorf("node %s: autoscale %d:%d: min is greater than max", n.Name, a.Min, a.Max)
		}
		if n.Concurrency != 0 && (n.Concurrency < a.Min || n.Concurrency > a.Max) {
			return fmt.Errorf("node %s: concurrency %d is outside the autoscale bounds %d:%d", n.Name, n.Concurrency, a.Min, a.Max)
		}
	}
	keys := map[string]bool{}
	for _, e := range n.Env {
		if !envKeyRE.MatchString(e.Key) {
			return fmt.Errorf("node %s: variable name %q: want letters, digits and _, not starting with a digit", n.Name, e.Key)
		}
		if why, ok := reservedVars[e.Key]; ok {
			return fmt.Errorf("node %s: variable %s cannot be set per node: %s", n.Name, e.Key, why)
		}
		if keys[e.Key] {
			return fmt.Errorf("node %s: variable %s given twice", n.Name, e.Key)
		}
		keys[e.Key] = true
		if _, err := quoteEnvValue(e.Value); err != nil {
			return fmt.Errorf("node %s: variable %s: %v", n.Name, e.Key, err)
		}
	}
	return nil
}
