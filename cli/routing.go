package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/routing"
)

type routingOptions struct {
	jsonOut bool
	sample  bool
}

func newRoutingCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "routing",
		Short: "Inspect the routing file (queues, aliases, broadcast channels)",
	}
	cmd.AddCommand(newRoutingDumpCmd(a))
	return cmd
}

func newRoutingDumpCmd(a *App) *cobra.Command {
	o := &routingOptions{}
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print the active routing file, or a starter with --sample",
		Long: `Print the routing file named by --routing-config or STEM_ROUTING_CONFIG
(environment first, then the env file), validated, as YAML or (--json) as
JSON with the same keys. Without a routing file, the built-in routing is
printed: one queue, "default".

--sample prints a commented starter file; it loads back unchanged:

  stem routing dump --sample > /etc/stem/routing.yaml

Exit 78 when the routing file is missing or invalid (the message names the
file and line).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if o.sample {
				if o.jsonOut {
					return routing.SampleConfig().Dump(out, routing.JSON)
				}
				_, err := out.Write(routing.Sample())
				return err
			}
			env, err := a.env(cmd)
			if err != nil {
				return err
			}
			path, _ := env.get("STEM_ROUTING_CONFIG")
			rc := routing.Default()
			if path != "" {
				if rc, err = routing.Load(path); err != nil {
					return withCode(ExitConfig, err)
				}
			}
			if o.jsonOut {
				return rc.Dump(out, routing.JSON)
			}
			if path == "" {
				fmt.Fprintln(out, "# no routing file (--routing-config, STEM_ROUTING_CONFIG): the built-in routing")
			}
			return rc.Dump(out, routing.YAML)
		},
	}
	fs := cmd.Flags()
	addVarFlag(fs, "STEM_ROUTING_CONFIG", 's', "routing file")
	fs.BoolVar(&o.jsonOut, "json", false, "print JSON (same keys as the YAML)")
	fs.BoolVar(&o.sample, "sample", false, "print a starter routing file instead")
	return cmd
}
