package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/sqlite"
)

// Open creates the database file (and its schema) on first use; the Engine
// is the broker, the result backend and the worker registry of a one-host
// deployment. Other processes may open the same file at once.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "stem-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	e, err := sqlite.Open(ctx, "sqlite://"+filepath.Join(dir, "stem.db"), sqlite.Options{ResultTTL: 24 * time.Hour})
	if err != nil {
		fmt.Println(err) // names the path: a missing directory, a file that is not stem's, ...
		return
	}
	defer e.Close()

	err = e.PublishBatch(ctx, []broker.Envelope{
		{ID: "t1", Name: "mail.send", Queue: "default", Args: []byte(`{"to":"a@example.com"}`)},
		{ID: "t2", Name: "mail.send", Queue: "default", Args: []byte(`{"to":"b@example.com"}`)},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"high", "default"}, Max: 256, Lease: 30 * time.Second, Wait: time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range ds {
		fmt.Println(d.Envelope.ID, d.Envelope.Name, string(d.Envelope.Args))
	}
	// ... run the tasks, then:
	if err := e.Ack(ctx, ds); err != nil {
		fmt.Println(err)
	}
	// Output:
	// t1 mail.send {"to":"a@example.com"}
	// t2 mail.send {"to":"b@example.com"}
}
