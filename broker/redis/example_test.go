package redis_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/redis"
)

// Open connects; the Engine is the broker, the result backend and the
// worker registry of a deployment.
func ExampleOpen() {
	ctx := context.Background()
	e, err := redis.Open(ctx, "redis://:password@127.0.0.1:6379/0", redis.Options{Namespace: "stem", ResultTTL: 24 * time.Hour})
	if errors.Is(err, stem.ErrUnavailable) {
		fmt.Println("Redis is down:", err) // the password is redacted
		return
	}
	if err != nil {
		fmt.Println(err)
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
