package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/units"
)

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
	return writeJSON(w, out)
}
