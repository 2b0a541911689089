package cli

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/units"
)

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
