package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem"
)

func lookup(flags, env, file map[string]string) Lookup {
	l := Lookup{
		{Name: "flag", Get: func(k string) (string, bool) { v, ok := flags[k]; return v, ok }, Display: func(k string) string { return "--flag-for-" + k }},
		MapSource("environment", env),
	}
	if file != nil {
		l = append(l, MapSource("env file", file))
	}
	return l
}

func TestPrecedenceFlagEnvFileDefault(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name             string
		flags, env, file map[string]string
		wantNode         string
		wantConcurrency  int
	}{
		{"default", nil, nil, nil, "worker", 4},
		{"file", nil, nil, map[string]string{"STEM_WORKER_NODE": "f", "STEM_WORKER_CONCURRENCY": "2"}, "f", 2},
		{"env beats file", nil, map[string]string{"STEM_WORKER_NODE": "e"}, map[string]string{"STEM_WORKER_NODE": "f"}, "e", 4},
		{"flag beats env", map[string]string{"STEM_WORKER_NODE": "x"}, map[string]string{"STEM_WORKER_NODE": "e"}, map[string]string{"STEM_WORKER_NODE": "f"}, "x", 4},
		{"an empty variable does not hide the file", nil, map[string]string{"STEM_WORKER_NODE": ""}, map[string]string{"STEM_WORKER_NODE": "f"}, "f", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(lookup(tt.flags, tt.env, tt.file), 4)
			if err != nil {
				t.Fatal(err)
			}
			if c.Node != tt.wantNode || c.Concurrency != tt.wantConcurrency {
				t.Fatalf("node=%q concurrency=%d, want %q %d", c.Node, c.Concurrency, tt.wantNode, tt.wantConcurrency)
			}
		})
	}
}

// TestEveryVariableIsRead sets each documented variable to a valid value and
// checks that Load picks it up, so no documented variable is inert.
func TestEveryVariableIsRead(t *testing.T) {
	t.Parallel()
	values := map[string]string{
		"STEM_ENV_FILE":                    "/etc/stem/stem.env",
		"STEM_BROKER_URL":                  "redis://10.0.0.1:6380/2",
		"STEM_RESULT_BACKEND_URL":          "redis://10.0.0.2:6379/3",
		"STEM_RESULT_TTL":                  "2h",
		"STEM_WORKER_NAMESPACE":            "prod",
		"STEM_WORKER_NODE":                 "alpha",
		"STEM_WORKER_QUEUES":               "critical, default",
		"STEM_WORKER_CONCURRENCY":          "7",
		"STEM_WORKER_PREFETCH":             "3",
		"STEM_WORKER_LEASE":                "45s",
		"STEM_WORKER_HEARTBEAT":            "2s",
		"STEM_WORKER_SHUTDOWN_GRACE":       "9s",
		"STEM_TASKS_FILE":                  "/etc/stem/tasks.yaml",
		"STEM_WORKER_PIDFILE":              "/run/stem/alpha.pid",
		"STEM_WORKER_SIGNALS":              "TERM=soft",
		"STEM_WORKER_AUTOSCALE":            "yes",
		"STEM_WORKER_MIN_CONCURRENCY":      "2",
		"STEM_WORKER_MAX_CONCURRENCY":      "9",
		"STEM_WORKER_SCALE_UP_STEP":        "3",
		"STEM_WORKER_SCALE_DOWN_STEP":      "2",
		"STEM_WORKER_IDLE_PERIOD":          "45s",
		"STEM_WORKER_AUTOSCALE_TICK":       "250ms",
		"STEM_WORKER_SCALE_UP_COOLDOWN":    "0s",
		"STEM_WORKER_SCALE_DOWN_COOLDOWN":  "1m",
		"STEM_WORKER_MAX_TASKS_PER_CHILD":  "500",
		"STEM_WORKER_MAX_MEMORY_PER_CHILD": "512MiB",
		"STEM_WORKER_TERMINATE_GRACE":      "3s",
		"STEM_UNKNOWN_TASK_TTL":            "2h",
		"STEM_CONTROL_MAX_AGE":             "45s",
		"STEM_METRICS_ADDR":                "127.0.0.1:9464",
		"STEM_CONTROL_NAMESPACE":           "ctl",
		"STEM_CONTROL_TIMEOUT":             "750ms",
		"STEM_CONTROL_SIGNING_KEY":         "k3y",
		"STEM_REDIS_REQUIRE_AOF":           "true",
		"STEM_REVOKE_STORE_URL":            "/var/lib/stem/revokes.jsonl",
		"STEM_REVOKE_SYNC_INTERVAL":        "10s",
		"STEM_LOG_LEVEL":                   "debug",
		"STEM_LOG_FORMAT":                  "json",
	}
	for _, k := range []string{"STEM_ROUTING_CONFIG", "STEM_WORKER_COMMAND", "STEM_WORKER_BROADCASTS", "STEM_WORKER_LOGFILE", "STEM_WORKER_PIDFILE_FD"} {
		values[k] = "(daemon toolkit)"
	}
	for _, v := range Vars {
		if _, ok := values[v.Key]; !ok {
			t.Errorf("documented variable %s has no value in this test", v.Key)
		}
	}
	c, err := Load(lookup(nil, values, nil), 4)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{
		"STEM_ENV_FILE": c.EnvFile, "STEM_BROKER_URL": c.BrokerURL, "STEM_RESULT_BACKEND_URL": c.ResultBackendURL,
		"STEM_RESULT_TTL": c.ResultTTL, "STEM_WORKER_NAMESPACE": c.Namespace, "STEM_WORKER_NODE": c.Node,
		"STEM_WORKER_QUEUES": strings.Join(c.Queues, "|"), "STEM_WORKER_CONCURRENCY": c.Concurrency,
		"STEM_WORKER_PREFETCH": c.Prefetch, "STEM_WORKER_LEASE": c.Lease, "STEM_WORKER_HEARTBEAT": c.Heartbeat,
		"STEM_WORKER_SHUTDOWN_GRACE": c.ShutdownGrace, "STEM_TASKS_FILE": c.TasksFile, "STEM_WORKER_PIDFILE": c.Pidfile, "STEM_WORKER_SIGNALS": c.Signals,
		"STEM_WORKER_AUTOSCALE": c.Autoscale, "STEM_WORKER_MIN_CONCURRENCY": c.MinConcurrency, "STEM_WORKER_MAX_CONCURRENCY": c.MaxConcurrency,
		"STEM_WORKER_SCALE_UP_STEP": c.ScaleUpStep, "STEM_WORKER_SCALE_DOWN_STEP": c.ScaleDownStep, "STEM_WORKER_IDLE_PERIOD": c.IdlePeriod,
		"STEM_WORKER_AUTOSCALE_TICK": c.AutoscaleTick, "STEM_WORKER_SCALE_UP_COOLDOWN": c.UpCooldown, "STEM_WORKER_SCALE_DOWN_COOLDOWN": c.DownCooldown,
		"STEM_WORKER_MAX_TASKS_PER_CHILD": c.MaxTasksPerChild, "STEM_WORKER_MAX_MEMORY_PER_CHILD": c.MaxChildMemory,
		"STEM_WORKER_TERMINATE_GRACE": c.TerminateGrace, "STEM_UNKNOWN_TASK_TTL": c.UnknownTaskTTL, "STEM_METRICS_ADDR": c.MetricsAddr, "STEM_CONTROL_NAMESPACE": c.ControlNamespace,
		"STEM_CONTROL_TIMEOUT": c.ControlTimeout, "STEM_CONTROL_SIGNING_KEY": c.SigningKey, "STEM_REDIS_REQUIRE_AOF": c.RedisRequireAOF, "STEM_CONTROL_MAX_AGE": c.ControlMaxAge,
		"STEM_REVOKE_STORE_URL":     "(read by engine.ResolveRevokeURL, tested there)",
		"STEM_REVOKE_SYNC_INTERVAL": c.RevokeSync, "STEM_LOG_LEVEL": c.LogLevel,
		"STEM_LOG_FORMAT": c.LogFormat,
	}
	want := map[string]any{
		"STEM_ENV_FILE": "/etc/stem/stem.env", "STEM_BROKER_URL": "redis://10.0.0.1:6380/2", "STEM_RESULT_BACKEND_URL": "redis://10.0.0.2:6379/3",
		"STEM_RESULT_TTL": 2 * time.Hour, "STEM_WORKER_NAMESPACE": "prod", "STEM_WORKER_NODE": "alpha",
		"STEM_WORKER_QUEUES": "critical|default", "STEM_WORKER_CONCURRENCY": 7, "STEM_WORKER_PREFETCH": 3,
		"STEM_WORKER_LEASE": 45 * time.Second, "STEM_WORKER_HEARTBEAT": 2 * time.Second,
		"STEM_WORKER_SHUTDOWN_GRACE": 9 * time.Second, "STEM_TASKS_FILE": "/etc/stem/tasks.yaml", "STEM_WORKER_PIDFILE": "/run/stem/alpha.pid", "STEM_WORKER_SIGNALS": "TERM=soft",
		"STEM_WORKER_AUTOSCALE": true, "STEM_WORKER_MIN_CONCURRENCY": 2, "STEM_WORKER_MAX_CONCURRENCY": 9,
		"STEM_WORKER_SCALE_UP_STEP": 3, "STEM_WORKER_SCALE_DOWN_STEP": 2, "STEM_WORKER_IDLE_PERIOD": 45 * time.Second,
		"STEM_WORKER_AUTOSCALE_TICK": 250 * time.Millisecond, "STEM_WORKER_SCALE_UP_COOLDOWN": time.Duration(0), "STEM_WORKER_SCALE_DOWN_COOLDOWN": time.Minute,
		"STEM_WORKER_MAX_TASKS_PER_CHILD": 500, "STEM_WORKER_MAX_MEMORY_PER_CHILD": int64(512 << 20),
		"STEM_WORKER_TERMINATE_GRACE": 3 * time.Second, "STEM_METRICS_ADDR": "127.0.0.1:9464", "STEM_CONTROL_NAMESPACE": "ctl",
		"STEM_CONTROL_TIMEOUT": 750 * time.Millisecond, "STEM_CONTROL_SIGNING_KEY": "k3y", "STEM_REDIS_REQUIRE_AOF": true, "STEM_REVOKE_STORE_URL": "(read by engine.ResolveRevokeURL, tested there)",
		"STEM_REVOKE_SYNC_INTERVAL": 10 * time.Second,
		"STEM_LOG_LEVEL":            "debug", "STEM_LOG_FORMAT": "json",
	}

	// Read by the daemon toolkit (cli/multi.go, cli/routing.go) and
	// tested by its scripts in cli/testdata/daemon.
	for _, k := range []string{"STEM_ROUTING_CONFIG", "STEM_WORKER_COMMAND", "STEM_WORKER_BROADCASTS", "STEM_WORKER_LOGFILE", "STEM_WORKER_PIDFILE_FD"} {
		got[k], want[k] = "(daemon toolkit)", "(daemon toolkit)"
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %v, want %v", k, got[k], w)
		}
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(lookup(nil, nil, nil), 3)
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultBrokerURL(func(string) (string, bool) { return "", false })
	if c.BrokerURL != def || !c.BrokerDefaulted || c.ResultBackendURL != def || c.Prefetch != 3 || c.Namespace != "stem" || c.Queues[0] != "default" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestBadValuesNameVariableAndValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, val string
		flag     bool
		want     string
	}{
		{"STEM_WORKER_CONCURRENCY", "abc", false, `invalid STEM_WORKER_CONCURRENCY="abc": must be an integer`},
		{"STEM_WORKER_CONCURRENCY", "0", false, `invalid STEM_WORKER_CONCURRENCY="0": must be between 1 and 100000`},
		{"STEM_WORKER_CONCURRENCY", "abc", true, `invalid --flag-for-STEM_WORKER_CONCURRENCY="abc"`},
		{"STEM_WORKER_LEASE", "10", false, `invalid STEM_WORKER_LEASE="10": must be a Go duration`},
		{"STEM_WORKER_LEASE", "-1s", false, `must be greater than zero`},
		{"STEM_BROKER_URL", "amqp://guest:hunter2@h/", false, `unsupported scheme "amqp"; supported: sqlite://, redis://, rediss://, postgres://, postgresql://, memory://`},
		{"STEM_BROKER_URL", "amqp://guest:hunter2@h/", false, `xxxxx`},
		{"STEM_BROKER_URL", "localhost:6379", false, `unsupported scheme "localhost"`},
		{"STEM_LOG_FORMAT", "xml", false, `must be one of auto, text, json, journal`},
		{"STEM_WORKER_NODE", "a/b", false, `invalid STEM_WORKER_NODE="a/b"`},
		{"STEM_WORKER_NAMESPACE", "a:b", false, `no spaces, slashes or colons`},
		{"STEM_WORKER_QUEUES", "a b", false, `queue name "a b"`},
		{"STEM_WORKER_SCALE_UP_STEP", "0", false, `invalid STEM_WORKER_SCALE_UP_STEP="0": must be between 1 and 100000`},
		{"STEM_WORKER_AUTOSCALE_TICK", "-1s", false, `must be greater than zero`},
		{"STEM_WORKER_MAX_MEMORY_PER_CHILD", "lots", false, `must be a size such as 512MiB`},
		{"STEM_WORKER_AUTOSCALE", "maybe", false, `must be true or false`},
	}
	for _, tt := range tests {
		m := map[string]string{tt.key: tt.val}
		var l Lookup
		if tt.flag {
			l = lookup(m, nil, nil)
		} else {
			l = lookup(nil, m, nil)
		}
		_, err := Load(l, 2)
		var ce *stem.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s=%s: got %v, want a *stem.ConfigError", tt.key, tt.val, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s=%s: error %q does not contain %q", tt.key, tt.val, err, tt.want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("password leaked: %v", err)
		}
	}
}

func TestDefaultBrokerIsSQLiteInTheStateDir(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"XDG_STATE_HOME": "/x/state", "HOME": "/home/a"}, "sqlite:///x/state/stem/stem.db"},
		{map[string]string{"XDG_STATE_HOME": "relative", "HOME": "/home/a"}, "sqlite:///home/a/.local/state/stem/stem.db"},
		{map[string]string{"HOME": "/home/a"}, "sqlite:///home/a/.local/state/stem/stem.db"},
	}
	for _, tt := range tests {
		if got := DefaultBrokerURL(env(tt.env)); got != tt.want {
			t.Errorf("%v: %s, want %s", tt.env, got, tt.want)
		}
		c, err := Load(lookup(nil, tt.env, nil), 1)
		if err != nil || c.BrokerURL != tt.want || c.ResultBackendURL != tt.want {
			t.Errorf("Load with %v: %+v %v", tt.env, c.BrokerURL, err)
		}
	}
	if got := DefaultBrokerURL(env(nil)); !strings.HasPrefix(got, "sqlite://"+os.TempDir()) {
		t.Errorf("without HOME: %s", got)
	}
}

func TestMinGreaterThanMax(t *testing.T) {
	t.Parallel()
	_, err := Load(lookup(nil, map[string]string{"STEM_WORKER_AUTOSCALE": "1", "STEM_WORKER_MIN_CONCURRENCY": "8", "STEM_WORKER_MAX_CONCURRENCY": "2"}, nil), 4)
	if err == nil || !strings.Contains(err.Error(), "min concurrency is greater than max concurrency 2") {
		t.Fatalf("got %v", err)
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "1GiB": 1 << 30, "500MB": 500e6, "4 KiB": 4096, "7B": 7} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.5GiB", "12XB", "99999999999TiB"} {
		if _, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) accepted", bad)
		}
	}
}

func TestLoadEnvFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.env")
	os.WriteFile(good, []byte("# comment\nSTEM_WORKER_NODE=alpha\nexport STEM_WORKER_QUEUES=\"a,b\"\n"), 0o600)
	m, err := LoadEnvFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if m["STEM_WORKER_NODE"] != "alpha" || m["STEM_WORKER_QUEUES"] != "a,b" {
		t.Fatalf("got %v", m)
	}
	bad := filepath.Join(dir, "bad.env")
	os.WriteFile(bad, []byte("A=1\nB=2\nFOO-BAR=3\n"), 0o600)
	_, err = LoadEnvFile(bad)
	if err == nil || !strings.Contains(err.Error(), bad+":3: ") {
		t.Fatalf("want an error naming %s:3, got %v", bad, err)
	}
	_, err = LoadEnvFile(filepath.Join(dir, "missing.env"))
	if err == nil || !strings.Contains(err.Error(), "missing.env: no such file") {
		t.Fatalf("got %v", err)
	}
}
