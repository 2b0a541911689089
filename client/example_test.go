package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/engine"
	"github.com/stemhq/stem/worker"
)

// A Go program that produces tasks and runs a worker for them: the engine
// is opened from a URL (sqlite:///var/lib/stem/stem.db, redis://...,
// postgres://...; memory:// here), the worker registers its handlers, and
// the client enqueues and waits for the outcome.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eng, err := engine.Open(ctx, engine.Options{BrokerURL: "memory://example", Namespace: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Close()

	handlers := worker.NewRegistry()
	handlers.MustRegister("add", func(_ worker.TaskContext, args json.RawMessage) (any, error) {
		var xs []int
		if err := json.Unmarshal(args, &xs); err != nil {
			return nil, fmt.Errorf("%w: %v", worker.ErrNoRetry, err)
		}
		return xs[0] + xs[1], nil
	}, worker.TaskOptions{})
	w, err := worker.New(worker.Config{Broker: eng.Broker, Results: eng.Results, Handlers: handlers, Node: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	defer func() { w.Shutdown(worker.Warm); <-stopped }()

	c := client.New(eng.Broker, eng.Results, client.Options{})
	env, err := c.Enqueue(ctx, client.Task{Name: "add", Args: json.RawMessage(`[2, 3]`)})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := c.Wait(ctx, []string{env.ID})
	if err != nil {
		fmt.Println(err)
		return
	}
	st := out.States[0]
	fmt.Println(st.State, string(st.Result))
	// Output: succeeded 5
}
