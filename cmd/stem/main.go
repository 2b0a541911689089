// Command stem is the stem CLI: workers, producers, the control plane and
// the daemon toolkit. See `stem --help`.
package main

import (
	"os"

	"github.com/stemhq/stem/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
