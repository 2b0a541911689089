// Package diagnose runs stem's local troubleshooting checks for a worker
// node (pid and log directories, the pidfile and the process it names, the
// env file, the worker command, the broker URL) and returns structured
// results. Nothing here needs the broker: a connection test runs only when
// the caller plugs one in (Input.Connect, `stem worker diagnose
// --connect`).
//
// Every check yields one Check with a stable Name and a Level.
package diagnose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/google/shlex"
	"golang.org/x/sys/unix"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/daemon"
)

// Level is the severity of a check's result.
type Level string

// Levels, from best to worst: all is well (or nothing to check), works but
// deserves a look, will not work.
const (
	Info    Level = "info"
	Warning Level = "warning"
	Error   Level = "error"
)

// Tag is the level's marker in text output: [OK], [WARN] or [ERR].
func (l Level) Tag() string {
	return cmp.Or(map[Level]string{Warning: "[WARN]", Error: "[ERR]"}[l], "[OK]")
}

// Names of the checks (stable: they are part of the JSON schema).
const (
	CheckPidDir      = "pid-directory"
	CheckLogDir      = "log-directory"
	CheckPidfile     = "pidfile"
	CheckProcess     = "process"
	CheckLogfile     = "logfile"
	CheckEnvFile     = "env-file"
	CheckEnvSecrets  = "env-file-permissions"
	CheckEnvironment = "environment-secrets"
	CheckCommand     = "worker-command"
	CheckBrokerURL   = "broker-url"
	CheckBrokerReach = "broker-connection"
	CheckDurability  = "broker-durability"
)

// Check is one result.
type Check struct {
	Name    string `json:"name"`
	Level   Level  `json:"level"`
	Message string `json:"message"`
}

// Report is the outcome of Run; its JSON form is the documented schema of
// `stem worker diagnose --json`.
type Report struct {
	Checks   []Check `json:"checks"`
	Errors   int     `json:"errors"`
	Warnings int     `json:"warnings"`
}

// add records a check. Its message passes through stem.RedactText, so
// no check shows a password whatever value or error it quotes.
func (r *Report) add(name string, l Level, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, Level: l, Message: stem.RedactText(fmt.Sprintf(format, args...))})
	switch l {
	case Error:
		r.Errors++
	case Warning:
		r.Warnings++
	}
}

// Input is what to check. Empty paths skip their checks.
type Input struct {
	// Pidfile and Logfile are expanded paths.
	Pidfile string
	Logfile string
	// EnvFile is the env file to parse ("" = none).
	EnvFile string
	// LoadEnvFile parses an env file (config.LoadEnvFile); its errors
	// should name the file and line.
	LoadEnvFile func(path string) (map[string]string, error)
	// Getenv looks up the process environment. Variables are looked up
	// there first, then in the env file; an empty value counts as unset.
	Getenv func(key string) (string, bool)
	// Environ lists the process environment ("KEY=value"), for the
	// environment-secrets check; nil skips it.
	Environ func() []string
	// DefaultCommand describes the command multi runs without
	// STEM_WORKER_COMMAND, for the message.
	DefaultCommand string
	// DefaultBrokerURL is used when STEM_BROKER_URL is not set.
	DefaultBrokerURL string
	// CheckBrokerURL validates a broker URL (scheme, form).
	CheckBrokerURL func(raw string) error
	// RedactURL hides a URL's password for messages.
	RedactURL func(raw string) string
	// Connect, when set, tries the broker (--connect). It returns the
	// broker's durability when the engine reports it (nil when it cannot
	// say), for the broker-durability check.
	Connect func(ctx context.Context, brokerURL string) (*broker.Durability, error)
	// Proc reads /proc; zero is the real system.
	Proc daemon.Proc
	// LookPath finds the worker command; nil means exec.LookPath.
	LookPath func(file string) (string, error)
}

// Run runs every check, in a fixed order.
func Run(ctx context.Context, in Input) Report {
	var r Report
	if in.Pidfile != "" {
		checkDir(&r, CheckPidDir, "pid", filepath.Dir(in.Pidfile))
	}
	if in.Logfile != "" {
		checkDir(&r, CheckLogDir, "log", filepath.Dir(in.Logfile))
	}
	if in.Pidfile != "" {
		checkPidfile(&r, in)
	}
	if in.Logfile != "" {
		checkLogfile(&r, in.Logfile)
	}
	env := checkEnvFile(&r, in)
	if in.Environ != nil {
		checkEnvironment(&r, in.Environ())
	}
	get := func(key string) (string, bool) {
		if in.Getenv != nil {
			if v, ok := in.Getenv(key); ok && v != "" {
				return v, true
			}
		}
		v, ok := env[key]
		return v, ok
	}
	checkCommand(&r, in, get)
	checkBroker(ctx, &r, in, get)
	return r
}

// checkDir checks that dir exists and is writable, or can be created.
func checkDir(r *Report, name, what, dir string) {
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		r.add(name, Error, "%s directory %s is not a directory", what, dir)
	case err == nil:
		if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			r.add(name, Error, "%s directory %s is not writable: %v", what, dir, err)
		} else {
			r.add(name, Info, "%s directory %s exists and is writable", what, dir)
		}
	case !missing(err):
		r.add(name, Error, "%s directory %s: %v", what, dir, unwrap(err))
	}
	if err == nil || !missing(err) {
		return
	}
	// Missing: can it be created? Find the nearest existing ancestor.
	for parent := filepath.Dir(dir); ; parent = filepath.Dir(parent) {
		st, err := os.Stat(parent)
		switch {
		case err == nil && !st.IsDir():
			r.add(name, Error, "%s directory %s does not exist and cannot be created: %s is not a directory", what, dir, parent)
		case err == nil:
			if err := unix.Access(parent, unix.W_OK|unix.X_OK); err != nil {
				r.add(name, Error, "%s directory %s does not exist and cannot be created: %s is not writable (%v)", what, dir, parent, err)
			} else {
				r.add(name, Warning, "%s directory %s does not exist; `stem worker multi start` will create it", what, dir)
			}
		case !missing(err):
			r.add(name, Error, "%s directory %s does not exist and cannot be created: %v", what, dir, unwrap(err))
		case filepath.Dir(parent) == parent:
			r.add(name, Error, "%s directory %s: no existing parent", what, dir)
		default:
			continue
		}
		return
	}
}

// missing reports whether a stat error means the path does not exist:
// ENOENT, or ENOTDIR when a parent is a file.
func missing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

func checkPidfile(r *Report, in Input) {
	ins := in.Proc.Inspect(in.Pidfile)
	switch ins.State {
	case daemon.NotRunning:
		r.add(CheckPidfile, Info, "no pidfile at %s: the node is not running", in.Pidfile)
		return
	case daemon.Invalid:
		r.add(CheckPidfile, Error, "%v: remove it (`stem worker multi start` replaces it)", ins.Err)
		return
	case daemon.Unknown, daemon.Refused:
		r.add(CheckPidfile, Error, "%v", ins.Err)
		return
	}
	lock := map[bool]string{true: "locked", false: "not locked"}[ins.Pidfile.Locked]
	r.add(CheckPidfile, Info, "pidfile %s names PID %d (written %s, %s)", in.Pidfile, ins.Pidfile.PID, ins.Pidfile.Written.UTC().Format(time.RFC3339), lock)
	switch ins.State {
	case daemon.Running:
		r.add(CheckProcess, Info, "PID %d (%s) is the node: running since %s", ins.Pidfile.PID, ins.Process.Comm, ins.Process.Start.UTC().Format(time.RFC3339))
	case daemon.Dead:
		r.add(CheckProcess, Warning, "stale pidfile: %v; `stem worker multi start` removes it", ins.Err)
	case daemon.Reused:
		r.add(CheckProcess, Error, "%v; do not signal it, remove the pidfile", ins.Err)
	}
}

func checkLogfile(r *Report, path string) {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.add(CheckLogfile, Info, "logfile %s does not exist yet", path)
	case err != nil:
		r.add(CheckLogfile, Error, "logfile %v", unwrap(err))
	case !st.Mode().IsRegular():
		r.add(CheckLogfile, Error, "logfile %s is not a regular file", path)
	default:
		if err := unix.Access(path, unix.W_OK); err != nil {
			r.add(CheckLogfile, Error, "logfile %s is not writable: %v", path, err)
			return
		}
		r.add(CheckLogfile, Info, "logfile %s is writable (%d bytes)", path, st.Size())
	}
}

func checkEnvFile(r *Report, in Input) map[string]string {
	if in.EnvFile == "" {
		r.add(CheckEnvFile, Info, "no env file given (--env-file, STEM_ENV_FILE)")
		return nil
	}
	if in.LoadEnvFile == nil {
		r.add(CheckEnvFile, Error, "no env file loader")
		return nil
	}
	env, err := in.LoadEnvFile(in.EnvFile)
	if err != nil {
		r.add(CheckEnvFile, Error, "%v", err)
		return nil
	}
	r.add(CheckEnvFile, Info, "env file %s parses (%d variables)", in.EnvFile, len(env))
	st, err := os.Stat(in.EnvFile)
	if err != nil {
		return env
	}
	secrets := Secrets(env)
	switch {
	case len(secrets) == 0:
		r.add(CheckEnvSecrets, Info, "env file %s holds no secrets that stem recognises", in.EnvFile)
	case st.Mode().Perm()&0o004 != 0:
		r.add(CheckEnvSecrets, Warning, "env file %s is readable by every user (mode %04o) and holds secrets (%s): chmod o-r %s",
			in.EnvFile, st.Mode().Perm(), strings.Join(secrets, ", "), in.EnvFile)
	default:
		r.add(CheckEnvSecrets, Info, "env file %s holds secrets (%s) and is not readable by others (mode %04o)", in.EnvFile, strings.Join(secrets, ", "), st.Mode().Perm())
	}
	return env
}

var secretName = regexp.MustCompile(`(?i)(PASSWORD|PASSWD|SECRET|SIGNING_KEY|PRIVATE_KEY|API_KEY|TOKEN)`)

// Secrets returns the sorted names of the variables in env that hold a
// secret: a URL or connection string with something stem.RedactURL
// hides (a password in the user info, ?password=, ?sslpassword=, ...),
// or a name that says password, secret, signing key, private key, API key
// or token. Values are never returned.
func Secrets(env map[string]string) []string {
	var out []string
	for k, v := range env {
		if v == "" {
			continue
		}
		if secretName.MatchString(k) || stem.HasSecret(v) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// checkEnvironment reports the STEM_* variables of the process
// environment that hold a secret, by name only.
func checkEnvironment(r *Report, environ []string) {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "STEM_") {
			env[k] = v
		}
	}
	secrets := Secrets(env)
	if len(secrets) == 0 {
		r.add(CheckEnvironment, Info, "no STEM_* variable of the environment holds a secret")
		return
	}
	r.add(CheckEnvironment, Warning, "the environment holds secrets (%s): a worker started from it passes them to every process it starts, "+
		"and shell histories and process listings keep them; put them in the env file (/etc/stem/stem.env, mode 0640, owner root:stem) and unset them here",
		strings.Join(secrets, ", "))
}

func checkCommand(r *Report, in Input, get func(string) (string, bool)) {
	raw, ok := get("STEM_WORKER_COMMAND")
	if !ok || strings.TrimSpace(raw) == "" {
		r.add(CheckCommand, Info, "STEM_WORKER_COMMAND is not set: `stem worker multi` runs %q", cmp.Or(in.DefaultCommand, "stem worker run"))
		return
	}
	argv, err := shlex.Split(raw)
	if err != nil {
		r.add(CheckCommand, Error, "STEM_WORKER_COMMAND=%q does not parse: %v", raw, err)
		return
	}
	if len(argv) == 0 {
		r.add(CheckCommand, Error, "STEM_WORKER_COMMAND=%q holds no command", raw)
		return
	}
	look := in.LookPath
	if look == nil {
		look = exec.LookPath
	}
	path, err := look(argv[0])
	if err != nil {
		r.add(CheckCommand, Error, "STEM_WORKER_COMMAND: %s is not an executable file: %v", argv[0], unwrapExec(err))
		return
	}
	r.add(CheckCommand, Info, "STEM_WORKER_COMMAND runs %s (executable)", path)
}

func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return unwrap(err)
}

func checkBroker(ctx context.Context, r *Report, in Input, get func(string) (string, bool)) {
	raw, ok := get("STEM_BROKER_URL")
	src := "STEM_BROKER_URL"
	if !ok || raw == "" {
		raw, src = in.DefaultBrokerURL, "default broker URL"
	}
	if raw == "" {
		r.add(CheckBrokerURL, Info, "no broker URL configured")
		return
	}
	shown := raw
	if in.RedactURL != nil {
		shown = in.RedactURL(raw)
	}
	if in.CheckBrokerURL != nil {
		if err := in.CheckBrokerURL(raw); err != nil {
			r.add(CheckBrokerURL, Error, "%s %s: %v", src, shown, err)
			return
		}
	}
	r.add(CheckBrokerURL, Info, "%s %s is well-formed", src, shown)
	if in.Connect == nil {
		return
	}
	d, err := in.Connect(ctx, raw)
	if err != nil {
		r.add(CheckBrokerReach, Error, "cannot reach %s: %v", shown, err)
		return
	}
	r.add(CheckBrokerReach, Info, "connected to %s", shown)
	switch {
	case d == nil:
		r.add(CheckDurability, Warning, "%s did not say whether it keeps tasks across a crash (its persistence settings could not be read)", shown)
	case d.Durable:
		r.add(CheckDurability, Info, "%s keeps tasks across a crash: %s", shown, d.Detail)
	default:
		r.add(CheckDurability, Error, "%s may lose tasks in a crash: %s", shown, d.Detail)
	}
}
