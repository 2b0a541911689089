package routing_test

import (
	"fmt"
	"os"

	"github.com/stemhq/stem/routing"
)

func ExampleConfig_ResolveQueues() {
	c, err := routing.Parse("routing.yaml", []byte(`
default_queue: default
queues: {default: {}, critical: {}}
aliases:
  urgent: [critical, default]
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	qs, err := c.ResolveQueues([]string{"urgent"})
	fmt.Println(qs, err)
	_, err = c.ResolveQueues([]string{"fast"})
	fmt.Println(err)
	// Output:
	// [critical default] <nil>
	// unknown queue or alias "fast": routing file routing.yaml defines no such name
}

func ExampleConfig_Dump() {
	_ = routing.Default().Dump(os.Stdout, routing.YAML)
	// Output:
	// default_queue: default
	// queues:
	//   default: {}
}
