package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	known := map[string]bool{}
	for _, v := range config.Vars {
		known[v.Key] = true
	}
	var out []string
	for _, k := range keys {
		if !known[k] {
			out = append(out, k)
		}
	}
	return strings.Join(out, " and ")
}

type unitsGenerateOptions struct {
	unitsOptions
	output  string
	jsonOut bool
}

func newUnitsGenerateCmd(a *App) *cobra.Command {
	o := &unitsGenerateOptions{}
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Print the systemd units (or write them under --output)",
		Long: `Render the template unit, the target and, for each --node, its env file
and the symlinks 'systemctl enable stem-worker@NODE' would make. Nothing on
this machine changes: the files go to stdout, each after a line
"==> PATH <==" ("==> PATH -> TARGET <==" for a symlink), or with --json as
an array of {"path", "kind", "mode", "group", "content", "link"}, or with
--output DIR into DIR as if DIR were the root (the packages are built so).

Every '%' of a path is written as '%%', so systemd never expands it.`,
		Example: `  stem units generate --node alpha --queue critical,default --concurrency 8
  stem units generate --unit-dir /lib/systemd/system --output build/units`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := o.spec(a, cmd)
			if err != nil {
				return err
			}
			files, err := units.Render(s)
			if err != nil {
				return usageErrorf("%v", err)
			}
			out := cmd.OutOrStdout()
			switch {
			case o.output != "":
				if err := os.MkdirAll(o.output, 0o755); err != nil {
					return withCode(ExitInternal, err)
				}
				if _, err := (units.Installer{Root: o.output, Force: true}).Install(files); err != nil {
					return withCode(ExitInternal, err)
				}
				return nil
			case o.jsonOut:
				return writeUnitsJSON(out, files)
			}
			var b bytes.Buffer
			for i, f := range files {
				if i > 0 {
					b.WriteString("\n")
				}
				if f.Link != "" {
					fmt.Fprintf(&b, "==> %s -> %s <==\n", f.Path, f.Link)
					continue
				}
				fmt.Fprintf(&b, "==> %s <==\n", f.Path)
				b.Write(f.Content)
			}
			_, err = out.Write(b.Bytes())
			return err
		},
	}
	o.addFlags(cmd)
	fs := cmd.Flags()
	fs.StringVar(&o.unitDir, "unit-dir", units.DefaultUnitDir, "directory the template and target are installed in (the symlinks point there)")
	fs.StringVar(&o.output, "output", "", "write the files under this directory, as if it were the root")
	fs.BoolVar(&o.jsonOut, "json", false, "print a JSON array of files")
	cmd.MarkFlagsMutuallyExclusive("output", "json")
	return cmd
}

// unitFileJSON is one file of `units generate --json`.
type unitFileJSON struct {
	Path    string `json:"path"`
	Kind    string `json:"kind"`
	Mode    string `json:"mode,omitempty"`
	Group   string `json:"group,omitempty"`
	Content string `json:"content,omitempty"`
	Link    string `json:"link,omitempty"`
}

func writeUnitsJSON(w io.Writer, files []units.File) error {
	out := make([]unitFileJSON, 0, len(files))
	for _, f := range files {
		j := unitFileJSON{Path: f.Path, Kind: f.Kind.String(), Group: f.Group, Content: string(f.Content), Link: f.Link}
		if f.Link == "" {
			j.Mode = fmt.Sprintf("%04o", f.Mode)
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

type unitsInstallOptions struct {
	unitsOptions
	root     string
	force    bool
	noEnable bool
}

func newUnitsInstallCmd(a *App) *cobra.Command {
	o := &unitsInstallOptions{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Write the units and the nodes' env files under a root directory",
		Long: `Write, under --root (use --root / for this machine):

  - each --node's env file, /etc/stem/nodes/NODE.env (0640, root:GROUP when
    run as root and the group exists), and the symlinks that enable the node
    (started at boot, and by stem-workers.target);
  - the template and the target, into /etc/systemd/system, unless the same
    units are already installed by the package (under /lib or /usr/lib), or
    --unit-dir says where they are.

A file that exists with other content is left alone and the command exits
1 before writing anything; --force replaces it. Files that already hold what
would be written are reported unchanged. Then, on the machine itself:

  systemctl daemon-reload && systemctl start stem-workers.target`,
		Example: `  stem units install --root / --node alpha --node beta --queue default
  stem units install --root / --node reports --queue reports --concurrency 2 --env REPORTS_DIR=/srv/reports`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(a, cmd)
		},
	}
	o.addFlags(cmd)
	fs := cmd.Flags()
	fs.StringVar(&o.root, "root", "", "directory that stands for / (required; / for this machine)")
	fs.StringVar(&o.unitDir, "unit-dir", "", "directory of the template and target (default: the packaged ones if they match, else /etc/systemd/system)")
	fs.BoolVar(&o.force, "force", false, "replace files that differ from what would be written")
	fs.BoolVar(&o.noEnable, "no-enable", false, "do not write the enable symlinks of the nodes")
	return cmd
}

func (o *unitsInstallOptions) run(a *App, cmd *cobra.Command) error {
	if o.root == "" {
		return usageErrorf("--root is required (use --root / for this machine)")
	}
	out := cmd.OutOrStdout()
	s, err := o.spec(a, cmd)
	if err != nil {
		return err
	}
	p, err := units.PlanInstall(s, o.root, !o.noEnable)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if p.Overrides != "" {
		fmt.Fprintf(out, "note: %s differs from this rendering (another stem version, or other settings); writing %s, which overrides it\n",
			p.Overrides, filepath.Join(units.DefaultUnitDir, units.TemplateUnit))
	}
	changes, err := units.Installer{Root: o.root, Force: o.force}.Install(p.Files)
	for _, c := range changes {
		what := c.File.Path
		if c.File.Link != "" {
			what += " -> " + c.File.Link
		}
		fmt.Fprintf(out, "%s %s\n", c.Action, what)
		if c.Note != "" {
			fmt.Fprintf(out, "  note: %s\n", c.Note)
		}
	}
	var exists *units.ExistsError
	switch {
	case errors.As(err, &exists):
		return withCode(ExitFailure, err)
	case err != nil:
		return withCode(ExitInternal, err)
	}
	if p.Packaged != "" {
		fmt.Fprintf(out, "using the packaged %s and %s in %s\n", units.TemplateUnit, units.TargetUnit, p.Packaged)
	}
	if len(s.Nodes) > 0 {
		if abs, _ := filepath.Abs(o.root); abs == "/" {
			fmt.Fprintln(out, "next: systemctl daemon-reload && systemctl start stem-workers.target")
		}
	}
	return nil
}
