package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/postgres"
)

// Open connects, creates or upgrades the namespace's schema, and returns
// the broker, result backend and worker registry of a deployment.
func ExampleOpen() {
	ctx := context.Background()
	e, err := postgres.Open(ctx, "postgres://stem:password@db.example.com:5432/stem?sslmode=verify-full",
		postgres.Options{Namespace: "stem", ResultTTL: 24 * time.Hour})
	if errors.Is(err, stem.ErrUnavailable) {
		fmt.Println("Postgres is down:", err) // the password is redacted
		return
	}
	if err != nil {
		fmt.Println(err) // a bad URL, a schema that is not stem's, a newer schema, ...
		return
	}
	defer e.Close()

	ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"high", "default"}, Max: 256, Lease: 30 * time.Second, Wait: 2 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	// ... run the tasks, then:
	_ = e.Ack(ctx, ds)
}
