package memory_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/result"
)

// An Engine is a broker, a result backend and a registry at once.
func Example() {
	ctx := context.Background()
	e := memory.New(memory.Options{})
	defer e.Close()

	env := broker.Envelope{ID: "t1", Name: "mail.send", Queue: "default", Args: json.RawMessage(`{"to":"a@example.com"}`)}
	if err := e.Publish(ctx, env); err != nil {
		fmt.Println(err)
		return
	}
	ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"default"}, Max: 10, Lease: 30 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range ds {
		fmt.Println(d.Envelope.ID, d.Envelope.Name, string(d.Envelope.Args))
	}
	_ = e.Set(ctx, []result.TaskState{{ID: "t1", State: result.Succeeded, Result: json.RawMessage(`"sent"`)}})
	_ = e.Ack(ctx, ds)

	n, _ := e.PendingCount(ctx, "default")
	st, _ := e.Get(ctx, "t1")
	fmt.Println("pending:", n, "state:", st.State, string(st.Result))
	// Output:
	// t1 mail.send {"to":"a@example.com"}
	// pending: 0 state: succeeded "sent"
}
