// Package config resolves stem's configuration. Library packages take plain
// Config structs; only the CLI reads the outside world, through this
// package, in one order of precedence:
//
//	flag > STEM_* environment variable > env file > default
//
// Every setting is declared once in Vars, with its variable, default and
// documentation; the README's variable table is checked against Vars by a
// test, so the docs cannot drift from the behaviour.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/stemhq/stem"
)

// Source is one layer of configuration values, keyed by variable name.
type Source struct {
	// Name says where values come from, for messages: "flag", "environment",
	// "env file /etc/stem/stem.env".
	Name string
	// Get returns the value of a variable, if the layer sets it.
	Get func(key string) (string, bool)
	// Display, when set, names the key as the user wrote it in this layer
	// (a flag name for the flag layer).
	Display func(key string) string
}

// Lookup is an ordered list of sources; the first that has a key wins.
type Lookup []Source

// Get returns the winning value of key and the display name of where it
// came from (for errors). ok is false when no source sets it. An empty
// value does not count: `FOO=` in the environment does not hide the env
// file's FOO.
func (l Lookup) Get(key string) (value, from string, ok bool) {
	for _, s := range l {
		if s.Get == nil {
			continue
		}
		if v, found := s.Get(key); found && v != "" {
			from = key
			if s.Display != nil {
				from = s.Display(key)
			}
			return v, from, true
		}
	}
	return "", key, false
}

// EnvSource returns the process environment as a Source.
func EnvSource(getenv func(string) (string, bool)) Source {
	if getenv == nil {
		getenv = os.LookupEnv
	}
	return Source{Name: "environment", Get: getenv}
}

// MapSource returns a Source backed by a map.
func MapSource(name string, m map[string]string) Source {
	return Source{Name: name, Get: func(k string) (string, bool) { v, ok := m[k]; return v, ok }}
}

// Var documents one configuration variable.
type Var struct {
	Key     string
	Flag    string // the flag that overrides it, "" if none
	Default string
	Doc     string
}

// Vars lists every STEM_* variable stem reads, in README order.
var Vars = []Var{
	{"STEM_ENV_FILE", "--env-file", "/etc/stem/stem.env if readable", "env file (godotenv syntax) under the environment: the process environment wins over it; set it empty to read none"},
	{"STEM_BROKER_URL", "--broker-url", DefaultBrokerDoc, "broker: `sqlite:///path/stem.db` (embedded, one host), `redis://[user:pass@]host:port/db`, `rediss://...`, `postgres://...`, `memory://` (in-process, tests)"},
	{"STEM_RESULT_BACKEND_URL", "--result-backend-url", "the broker URL", "where task states and results are kept"},
	{"STEM_RESULT_TTL", "--result-ttl", "24h", "how long task states are kept"},
	{"STEM_WORKER_NAMESPACE", "--namespace", "stem", "key prefix that isolates one deployment's queues, results and workers"},
	{"STEM_WORKER_NODE", "--node", "worker", "node name; the worker id is `<node>@<hostname>`"},
	{"STEM_WORKER_QUEUES", "--queue", "default", "comma-separated queues to consume, in priority order"},
	{"STEM_WORKER_CONCURRENCY", "--concurrency", "number of CPUs", "most tasks run at once by one worker"},
	{"STEM_WORKER_PREFETCH", "--prefetch", "the concurrency", "tasks claimed ahead of free slots"},
	{"STEM_WORKER_LEASE", "--lease", "30s", "visibility timeout of a claimed task; renewed while it runs"},
	{"STEM_WORKER_HEARTBEAT", "--heartbeat", "5s", "heartbeat interval; the registry entry lives three intervals"},
	{"STEM_WORKER_SHUTDOWN_GRACE", "--shutdown-grace", "30s", "soft shutdown: how long terminated tasks get before a hard stop"},
	{"STEM_WORKER_SIGNALS", "--signals", "TERM=warm,INT=soft,QUIT=hard", "signal to shutdown-mode mapping of `worker run` (TERM, INT, QUIT, HUP, USR1, USR2 = warm, soft, hard)"},
	{"STEM_WORKER_PIDFILE", "--pidfile", "", "`worker run`: pidfile written (exclusively, locked) while the worker runs, removed at exit"},
	{"STEM_TASKS_FILE", "--tasks-file", "", "YAML file mapping task names to commands"},
	{"STEM_WORKER_AUTOSCALE", "--autoscale", "false", "move the concurrency between the min and max bounds from queue depth and in-flight work"},
	{"STEM_WORKER_MIN_CONCURRENCY", "--min-concurrency", "1", "autoscale lower bound"},
	{"STEM_WORKER_MAX_CONCURRENCY", "--max-concurrency", "the concurrency", "autoscale upper bound"},
	{"STEM_WORKER_SCALE_UP_STEP", "--scale-up-step", "1", "slots added per autoscale decision"},
	{"STEM_WORKER_SCALE_DOWN_STEP", "--scale-down-step", "1", "slots removed per autoscale decision"},
	{"STEM_WORKER_IDLE_PERIOD", "--idle-period", "30s", "how long without backlog and with free slots before scaling down"},
	{"STEM_WORKER_AUTOSCALE_TICK", "--autoscale-tick", "1s", "how often the autoscaler decides"},
	{"STEM_WORKER_SCALE_UP_COOLDOWN", "--scale-up-cooldown", "0s", "least time between two scale-ups"},
	{"STEM_WORKER_SCALE_DOWN_COOLDOWN", "--scale-down-cooldown", "the idle period", "least time between two scale-downs"},
	{"STEM_WORKER_MAX_TASKS_PER_CHILD", "--max-tasks-per-child", "0", "recycle an isolation child after this many tasks (0: never)"},
	{"STEM_WORKER_MAX_MEMORY_PER_CHILD", "--max-memory-per-child", "0", "recycle an isolation child whose RSS exceeds this after a task (`512MiB`, `1GiB`, bytes; 0: never); twice it kills the child mid-task"},
	{"STEM_WORKER_TERMINATE_GRACE", "--terminate-grace", "5s", "how long a terminated isolated or exec task has before its process group is killed"},
	{"STEM_UNKNOWN_TASK_TTL", "--unknown-task-ttl", "1h", "a task whose name this worker does not know is handed back (with backoff, no attempt counted) for a worker that knows it; dead-lettered with reason `unknown task` once this long has passed since a worker first saw it unknown"},
	{"STEM_METRICS_ADDR", "--metrics-addr", "", "serve Prometheus metrics on this address (`127.0.0.1:9464`); off when empty"},
	{"STEM_CONTROL_NAMESPACE", "--namespace (control commands), --control-namespace (worker run)", "the worker namespace", "control-plane namespace: which workers control commands reach and where workers register"},
	{"STEM_CONTROL_TIMEOUT", "--timeout", "5s", "how long control commands wait for replies (they return as soon as every live worker answered)"},
	{"STEM_CONTROL_SIGNING_KEY", "", "", "when set, control requests, replies and stored revoke and pause records are HMAC-signed; workers refuse unsigned or mis-signed ones and requesters ignore such replies"},
	{"STEM_CONTROL_MAX_AGE", "", "30s", "with a signing key: workers refuse control requests sent further than this from their clock (either way) and remember request ids this long, so a captured request cannot be replayed"},
	{"STEM_REDIS_REQUIRE_AOF", "", "false", "Redis broker: refuse to start (exit 78) when the server has AOF persistence off (`appendonly no`, a crash loses tasks) instead of logging a warning"},
	{"STEM_REVOKE_STORE_URL", "--revoke-store-url", "the result backend URL", "durable revoke store: `sqlite:///path`, `file:///path` or a bare path, `redis://`, `rediss://`, `postgres://`, `postgresql://`, `memory://`"},
	{"STEM_REVOKE_SYNC_INTERVAL", "--revoke-sync", "30s", "how often workers re-read revokes and paused queues from their stores"},
	{"STEM_ROUTING_CONFIG", "--routing-config", "", "routing file (queues, aliases, broadcast channels) for `worker multi` and `routing dump`"},
	{"STEM_WORKER_COMMAND", "", "this binary's worker run", "the command `worker multi` starts for each node (shell-like quoting)"},
	{"STEM_WORKER_BROADCASTS", "", "", "broadcast channels a node joins (set by `worker multi --broadcast`; reported in `worker stats`)"},
	{"STEM_WORKER_LOGFILE", "", "", "set by `worker multi` in a node's environment: the node's `--logfile` (informational)"},
	{"STEM_WORKER_PIDFILE_FD", "", "", "set by `worker multi`: the descriptor through which a node inherits its locked pidfile"},
	{"STEM_LOG_LEVEL", "--log-level", "info", "panic, fatal, error, warn, info, debug or trace"},
	{"STEM_LOG_FORMAT", "--log-format", "auto", "text, json, journal, or auto (journal when JOURNAL_STREAM is set)"},
}

// DefaultBrokerDoc describes the default broker for the docs.
const DefaultBrokerDoc = "a SQLite file in the per-user state directory"

// DefaultStateDir is where stem keeps its files when nothing says
// otherwise: $XDG_STATE_HOME/stem, else ~/.local/state/stem, else a
// directory of this user under the system's temporary directory.
func DefaultStateDir(get func(string) (string, bool)) string {
	if get == nil {
		get = os.LookupEnv
	}
	if v, ok := get("XDG_STATE_HOME"); ok && filepath.IsAbs(v) {
		return filepath.Join(v, "stem")
	}
	if home, ok := get("HOME"); ok && filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "stem")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("stem-%d", os.Getuid()))
}

// DefaultBrokerURL is the broker used when STEM_BROKER_URL is not set: the
// embedded SQLite file stem.db in DefaultStateDir, so stem works on one
// host with no server to install.
func DefaultBrokerURL(get func(string) (string, bool)) string {
	return "sqlite://" + filepath.Join(DefaultStateDir(get), "stem.db")
}

// Supported URL schemes for brokers and result backends.
var brokerSchemes = []string{"sqlite", "redis", "rediss", "postgres", "postgresql", "memory"}

// Reader reads typed values out of a Lookup and remembers the first error.
type Reader struct {
	L   Lookup
	err error
}

// Err returns the first error met.
func (r *Reader) Err() error { return r.err }

func (r *Reader) fail(from, val, msg string) {
	if r.err == nil {
		r.err = &stem.ConfigError{Key: from, Value: val, Msg: msg}
	}
}

// String returns key's value or def.
func (r *Reader) String(key, def string) string {
	if v, _, ok := r.L.Get(key); ok && v != "" {
		return v
	}
	return def
}

// read returns key's value parsed by parse, or def when key is unset or
// empty (or, for a value that does not parse, def and the first error).
func read[T any](r *Reader, key string, def T, parse func(v string) (T, string)) T {
	v, from, ok := r.L.Get(key)
	if !ok || v == "" {
		return def
	}
	x, msg := parse(v)
	if msg != "" {
		r.fail(from, v, msg)
		return def
	}
	return x
}

// Int returns key's value as an int within [min, max], or def.
func (r *Reader) Int(key string, def, min, max int) int {
	return read(r, key, def, func(v string) (int, string) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil:
			return 0, "must be an integer"
		case n < min || n > max:
			return 0, fmt.Sprintf("must be between %d and %d", min, max)
		}
		return n, ""
	})
}

// Duration returns key's value as a positive Go duration ("250ms", "5s").
func (r *Reader) Duration(key string, def time.Duration) time.Duration {
	return read(r, key, def, func(v string) (time.Duration, string) {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		switch {
		case err != nil:
			return 0, "must be a Go duration such as 250ms, 5s, 2m or 1h"
		case d <= 0:
			return 0, "must be greater than zero"
		}
		return d, ""
	})
}

// List returns key's comma-separated value, trimmed, empty items dropped.
func (r *Reader) List(key string, def []string) []string {
	return read(r, key, def, func(v string) (out []string, _ string) {
		if strings.TrimSpace(v) == "" {
			return def, ""
		}
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" && !ValidName(s) {
				return nil, fmt.Sprintf("queue name %q may hold only letters, digits, '.', '_', '-' and ':'", s)
			} else if s != "" {
				out = append(out, s)
			}
		}
		return out, ""
	})
}

// Bool returns key's value as a boolean (1/0, true/false, yes/no, on/off).
func (r *Reader) Bool(key string, def bool) bool {
	return read(r, key, def, func(v string) (bool, string) {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "true", "yes", "on":
			return true, ""
		case "0", "false", "no", "off":
			return false, ""
		}
		return false, "must be true or false"
	})
}

// DurationOrZero is Duration that also accepts 0.
func (r *Reader) DurationOrZero(key string, def time.Duration) time.Duration {
	return read(r, key, def, func(v string) (time.Duration, string) {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil && d >= 0 {
			return d, ""
		}
		return 0, "must be a Go duration such as 0s, 250ms, 5s or 2m"
	})
}

// Bytes returns key's value as a byte count: a plain number of bytes or a
// number with a unit (KiB, MiB, GiB, TiB, or KB, MB, GB, TB as powers of
// 1000).
func (r *Reader) Bytes(key string, def int64) int64 {
	return read(r, key, def, func(v string) (int64, string) {
		n, err := ParseBytes(v)
		if err != nil {
			return 0, err.Error()
		}
		return n, ""
	})
}

// ParseBytes parses "512MiB", "1GiB", "500MB", "1048576".
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("must be a size such as 512MiB, 1GiB or a number of bytes")
	}
	return n * mult, nil
}

// Enum returns key's value, which must be one of allowed.
func (r *Reader) Enum(key, def string, allowed ...string) string {
	v, from, ok := r.L.Get(key)
	if !ok || v == "" {
		return def
	}
	v = strings.ToLower(strings.TrimSpace(v))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(from, v, "must be one of "+strings.Join(allowed, ", "))
	return def
}

// URL returns key's value (or def) after checking its scheme is one of
// schemes. A bare path is accepted when allowPath is set.
func (r *Reader) URL(key, def string, schemes []string) string {
	v, from, ok := r.L.Get(key)
	if !ok || v == "" {
		return def
	}
	if err := stem.CheckURL(v, schemes); err != nil {
		r.fail(from, stem.RedactURL(v), err.Error())
		return def
	}
	return v
}

// ValidName reports whether s is a usable queue, node or namespace name.
func ValidName(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, c := range s {
		if !(unicode.IsLetter(c) || unicode.IsDigit(c) || strings.ContainsRune("._-:", c)) {
			return false
		}
	}
	return true
}

// Config is the resolved configuration of a stem command.
type Config struct {
	EnvFile   string
	BrokerURL string
	// BrokerDefaulted is set when BrokerURL is the default (nothing set
	// it): the CLI then creates the state directory.
	BrokerDefaulted  bool
	ResultBackendURL string
	ResultTTL        time.Duration
	Namespace        string
	Node             string
	Queues           []string
	Concurrency      int
	Prefetch         int
	Lease            time.Duration
	Heartbeat        time.Duration
	ShutdownGrace    time.Duration
	TasksFile        string
	Pidfile          string
	Signals          string
	Autoscale        bool
	MinConcurrency   int
	MaxConcurrency   int
	ScaleUpStep      int
	ScaleDownStep    int
	IdlePeriod       time.Duration
	AutoscaleTick    time.Duration
	UpCooldown       time.Duration
	DownCooldown     time.Duration
	MaxTasksPerChild int
	MaxChildMemory   int64
	TerminateGrace   time.Duration
	UnknownTaskTTL   time.Duration
	MetricsAddr      string
	ControlNamespace string
	ControlTimeout   time.Duration
	SigningKey       string
	RedisRequireAOF  bool
	ControlMaxAge    time.Duration
	RevokeSync       time.Duration
	LogLevel         string
	LogFormat        string
}

// Load resolves a Config from l. numCPU is the default concurrency.
func Load(l Lookup, numCPU int) (Config, error) {
	r := &Reader{L: l}
	if numCPU < 1 {
		numCPU = 1
	}
	c := Config{
		EnvFile:       r.String("STEM_ENV_FILE", ""),
		BrokerURL:     r.URL("STEM_BROKER_URL", "", brokerSchemes),
		ResultTTL:     r.Duration("STEM_RESULT_TTL", 24*time.Hour),
		Namespace:     r.String("STEM_WORKER_NAMESPACE", "stem"),
		Node:          r.String("STEM_WORKER_NODE", "worker"),
		Queues:        r.List("STEM_WORKER_QUEUES", []string{"default"}),
		Concurrency:   r.Int("STEM_WORKER_CONCURRENCY", numCPU, 1, 100000),
		Lease:         r.Duration("STEM_WORKER_LEASE", 30*time.Second),
		Heartbeat:     r.Duration("STEM_WORKER_HEARTBEAT", 5*time.Second),
		ShutdownGrace: r.Duration("STEM_WORKER_SHUTDOWN_GRACE", 30*time.Second),
		TasksFile:     r.String("STEM_TASKS_FILE", ""),
		Pidfile:       r.String("STEM_WORKER_PIDFILE", ""),
		Signals:       r.String("STEM_WORKER_SIGNALS", "TERM=warm,INT=soft,QUIT=hard"),
		LogLevel:      r.Enum("STEM_LOG_LEVEL", "info", "panic", "fatal", "error", "warn", "warning", "info", "debug", "trace"),
		LogFormat:     r.Enum("STEM_LOG_FORMAT", "auto", "auto", "text", "json", "journal"),
	}
	if c.BrokerURL == "" {
		c.BrokerURL = DefaultBrokerURL(func(k string) (string, bool) { v, _, ok := l.Get(k); return v, ok })
		c.BrokerDefaulted = true
	}
	c.ResultBackendURL = r.URL("STEM_RESULT_BACKEND_URL", c.BrokerURL, brokerSchemes)
	c.Prefetch = r.Int("STEM_WORKER_PREFETCH", c.Concurrency, 0, 1000000)
	c.Autoscale = r.Bool("STEM_WORKER_AUTOSCALE", false)
	c.MinConcurrency = r.Int("STEM_WORKER_MIN_CONCURRENCY", 1, 1, 100000)
	c.MaxConcurrency = r.Int("STEM_WORKER_MAX_CONCURRENCY", c.Concurrency, 1, 100000)
	c.ScaleUpStep = r.Int("STEM_WORKER_SCALE_UP_STEP", 1, 1, 100000)
	c.ScaleDownStep = r.Int("STEM_WORKER_SCALE_DOWN_STEP", 1, 1, 100000)
	c.IdlePeriod = r.Duration("STEM_WORKER_IDLE_PERIOD", 30*time.Second)
	c.AutoscaleTick = r.Duration("STEM_WORKER_AUTOSCALE_TICK", time.Second)
	c.UpCooldown = r.DurationOrZero("STEM_WORKER_SCALE_UP_COOLDOWN", 0)
	c.DownCooldown = r.Duration("STEM_WORKER_SCALE_DOWN_COOLDOWN", c.IdlePeriod)
	if c.Autoscale && c.MinConcurrency > c.MaxConcurrency {
		_, from, _ := l.Get("STEM_WORKER_MIN_CONCURRENCY")
		r.fail(from, strconv.Itoa(c.MinConcurrency), fmt.Sprintf("min concurrency is greater than max concurrency %d", c.MaxConcurrency))
	}
	c.MaxTasksPerChild = r.Int("STEM_WORKER_MAX_TASKS_PER_CHILD", 0, 0, 1<<30)
	c.MaxChildMemory = r.Bytes("STEM_WORKER_MAX_MEMORY_PER_CHILD", 0)
	c.TerminateGrace = r.Duration("STEM_WORKER_TERMINATE_GRACE", 5*time.Second)
	c.UnknownTaskTTL = r.Duration("STEM_UNKNOWN_TASK_TTL", time.Hour)
	c.MetricsAddr = r.String("STEM_METRICS_ADDR", "")
	c.ControlNamespace = r.String("STEM_CONTROL_NAMESPACE", c.Namespace)
	c.ControlTimeout = r.Duration("STEM_CONTROL_TIMEOUT", 5*time.Second)
	c.SigningKey = r.String("STEM_CONTROL_SIGNING_KEY", "")
	c.RedisRequireAOF = r.Bool("STEM_REDIS_REQUIRE_AOF", false)
	c.ControlMaxAge = r.Duration("STEM_CONTROL_MAX_AGE", 30*time.Second)
	c.RevokeSync = r.Duration("STEM_REVOKE_SYNC_INTERVAL", 30*time.Second)
	for _, kv := range []struct{ key, v string }{{"STEM_WORKER_NAMESPACE", c.Namespace}, {"STEM_WORKER_NODE", c.Node}, {"STEM_CONTROL_NAMESPACE", c.ControlNamespace}} {
		if !ValidName(kv.v) || strings.Contains(kv.v, ":") {
			_, from, _ := l.Get(kv.key)
			r.fail(from, kv.v, "may hold only letters, digits, '.', '_' and '-' (no spaces, slashes or colons)")
		}
	}
	if c.TasksFile != "" {
		c.TasksFile = filepath.Clean(c.TasksFile)
	}
	return c, r.Err()
}

// Keys returns the documented variable names, sorted.
func Keys() []string {
	out := make([]string, len(Vars))
	for i, v := range Vars {
		out[i] = v.Key
	}
	sort.Strings(out)
	return out
}
