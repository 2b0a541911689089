// Package cli is stem's command tree. It is importable: a Go program that
// registers its own task handlers gets every stem command by calling
// cli.Main with those handlers, for example:
//
//	func main() {
//		reg := worker.NewRegistry()
//		reg.MustRegister("reports.build", buildReport, worker.TaskOptions{MaxRetries: 3})
//		os.Exit(cli.Main(os.Args[1:], cli.WithHandlers(reg)))
//	}
//
// Commands write through cmd.OutOrStdout()/cmd.ErrOrStderr(), build their
// flags from an options struct, and return errors that ExitCode maps to the
// one exit-code table.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/tasks"
	"github.com/stemhq/stem/worker"
)

// Version is stamped at build time with -ldflags "-X github.com/stemhq/stem/cli.Version=...".
var Version = "dev"

// App is the state shared by the commands of one invocation.
type App struct {
	handlers  *worker.Registry
	lookupEnv func(string) (string, bool)
	environ   func() []string
	numCPU    int
	stdin     io.Reader
	// defaultEnvFile is read when STEM_ENV_FILE is not set, if readable.
	defaultEnvFile string
}

// Option configures an App.
type Option func(*App)

// WithHandlers makes the worker run the given handlers (besides the built-in
// stem.* tasks and those of the tasks file).
func WithHandlers(r *worker.Registry) Option { return func(a *App) { a.handlers = r } }

// WithEnv replaces the process environment (tests).
func WithEnv(lookup func(string) (string, bool), environ func() []string) Option {
	return func(a *App) { a.lookupEnv, a.environ = lookup, environ }
}

// DefaultEnvFile is the packaged env file, read by every command when
// STEM_ENV_FILE is not set and the file is readable.
const DefaultEnvFile = "/etc/stem/stem.env"

// WithDefaultEnvFile replaces DefaultEnvFile ("" turns it off; tests).
func WithDefaultEnvFile(path string) Option { return func(a *App) { a.defaultEnvFile = path } }

// WithStdin replaces standard input (tests).
func WithStdin(r io.Reader) Option { return func(a *App) { a.stdin = r } }

func newApp(opts []Option) *App {
	a := &App{lookupEnv: os.LookupEnv, environ: os.Environ, numCPU: runtime.NumCPU(), stdin: os.Stdin, defaultEnvFile: DefaultEnvFile}
	for _, o := range opts {
		o(a)
	}
	if a.handlers == nil {
		a.handlers = worker.NewRegistry()
	}
	return a
}

// getenv returns a process environment variable ("" when unset).
func (a *App) getenv(k string) string {
	v, _ := a.lookupEnv(k)
	return v
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// envAnnotation marks a flag with the variable it overrides.
const envAnnotation = "stem_env"

// bindEnv records that flag name on fs overrides variable key, and appends
// the variable's name to the flag's help so every flag teaches its variable.
func bindEnv(fs *pflag.FlagSet, name, key string) {
	f := fs.Lookup(name)
	if f == nil {
		panic("bindEnv: no flag " + name)
	}
	_ = fs.SetAnnotation(name, envAnnotation, []string{key})
	f.Usage += " ($" + key + ")"
}

// addVarFlag adds the flag config.Vars names for variable key, of kind
// (s string, i int, d duration, b bool, l list), with no default of its own
// (config.Load has it), bound to key.
func addVarFlag(fs *pflag.FlagSet, key string, kind byte, help string) {
	i := slices.IndexFunc(config.Vars, func(v config.Var) bool { return v.Key == key })
	name := strings.TrimPrefix(config.Vars[i].Flag, "--")
	switch kind {
	case 'i':
		fs.Int(name, 0, help)
	case 'd':
		fs.Duration(name, 0, help)
	case 'b':
		fs.Bool(name, false, help)
	case 'l':
		fs.StringSlice(name, nil, help)
	default:
		fs.String(name, "", help)
	}
	bindEnv(fs, name, key)
}

// flagSource collects the changed flags of cmd that are bound to variables.
func flagSource(cmd *cobra.Command) config.Source {
	vals := map[string]string{}
	names := map[string]string{}
	visit := func(f *pflag.Flag) {
		keys := f.Annotations[envAnnotation]
		if len(keys) == 0 || !f.Changed {
			return
		}
		v := f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			v = strings.Join(sv.GetSlice(), ",")
		}
		vals[keys[0]] = v
		names[keys[0]] = "--" + f.Name
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	return config.Source{
		Name:    "flag",
		Get:     func(k string) (string, bool) { v, ok := vals[k]; return v, ok },
		Display: func(k string) string { return names[k] },
	}
}

// cmdEnv is the configuration every command resolves, through a.env: the
// lookup (flag > process environment > env file) and the env file itself.
type cmdEnv struct {
	lookup config.Lookup
	// file is the env file's path ("" when none) and vars its variables.
	file string
	vars map[string]string
}

// get returns the winning value of key (flag, environment, env file); an
// empty value counts as unset.
func (e *cmdEnv) get(key string) (string, bool) {
	v, _, ok := e.lookup.Get(key)
	return v, ok
}

// env is the one configuration path of every command: flags bound to
// variables, then the process environment, then the env file (--env-file,
// STEM_ENV_FILE, else the packaged default when this user can read it). A
// bad env file is a *stem.ConfigError (exit 78) naming the file and
// line; e is then still the flag and environment layers, with file set.
func (a *App) env(cmd *cobra.Command) (e *cmdEnv, err error) {
	e = &cmdEnv{lookup: config.Lookup{flagSource(cmd), config.EnvSource(a.lookupEnv)}}
	path, _, ok := e.lookup.Get("STEM_ENV_FILE")
	// STEM_ENV_FILE set but empty means "no env file", not the default.
	if _, setEmpty := a.lookupEnv("STEM_ENV_FILE"); !ok && !setEmpty && a.defaultEnvFile != "" {
		if f, err := os.Open(a.defaultEnvFile); err == nil {
			f.Close()
			path, ok = a.defaultEnvFile, true
		}
	}
	if !ok || path == "" {
		return e, nil
	}
	e.file = path
	if e.vars, err = config.LoadEnvFile(path); err != nil {
		return e, err
	}
	e.lookup = append(e.lookup, config.MapSource("env file "+path, e.vars))
	return e, nil
}

// config resolves the full configuration for cmd.
func (a *App) config(cmd *cobra.Command) (config.Config, config.Lookup, error) {
	e, err := a.env(cmd)
	if err != nil {
		return config.Config{}, nil, err
	}
	c, err := config.Load(e.lookup, a.numCPU)
	return c, e.lookup, err
}

// logger builds the command's logger on stderr.
func (a *App) logger(cmd *cobra.Command, c config.Config) (*logrus.Logger, error) {
	js, _ := a.lookupEnv("JOURNAL_STREAM")
	l, err := logging.New(cmd.ErrOrStderr(), logging.Options{Level: c.LogLevel, Format: c.LogFormat, JournalStream: js})
	if err != nil {
		return nil, &stem.ConfigError{Key: "STEM_LOG_LEVEL", Value: c.LogLevel, Msg: err.Error()}
	}
	return l, nil
}

// New builds the root command.
func New(opts ...Option) *cobra.Command {
	return newRoot(newApp(opts))
}

// Main runs the command tree with args and returns the process exit code.
// Errors are printed as one line "stem: ..." on stderr.
//
// When the process was started as an isolation child or an exec task's
// supervisor (the worker re-executes its own binary for both), Main serves
// that role instead and never returns.
func Main(args []string, opts ...Option) int {
	// An exec task's supervisor needs nothing of the CLI.
	tasks.ServeSupervisorIfRequested()
	a := newApp(opts)
	if a.getenv(worker.ChildEnv) == "1" {
		reg, err := a.childHandlers()
		if err != nil {
			fmt.Fprintf(os.Stderr, "stem child: %v\n", err)
			return ExitInternal
		}
		worker.ServeChildIfRequested(reg)
	}
	root := newRoot(a)
	root.SetArgs(args)
	return Execute(root)
}

// Execute runs root and maps its error to an exit code.
func Execute(root *cobra.Command) int {
	cmd, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	code := ExitCode(err)
	if isCobraUsageError(err) {
		code = ExitUsage
	}
	var ee *ExitError
	if !(errors.As(err, &ee) && ee.Err == nil) {
		// The last line of defence: whatever wrapped a URL or a driver
		// error, no password reaches the terminal.
		fmt.Fprintf(root.ErrOrStderr(), "stem: %s\n", stem.RedactText(oneLine(err.Error())))
		if code == ExitUsage && cmd != nil {
			fmt.Fprintf(root.ErrOrStderr(), "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	return code
}

func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

// isCobraUsageError recognises cobra's own argument and command errors,
// which it returns as plain errors.
func isCobraUsageError(err error) bool {
	var ee *ExitError
	if errors.As(err, &ee) {
		return false
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most", "invalid argument", "flag needs an argument", "required flag", "if any flags in the group"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
