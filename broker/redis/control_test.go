package redis_test

import (
	"context"
	"testing"

	"github.com/stemhq/stem/broker/brokertest"
	stemredis "github.com/stemhq/stem/broker/redis"
	"github.com/stemhq/stem/control/controltest"
)

func TestControlContract(t *testing.T) {
	url := brokertest.RequireEnv(t, "STEM_TEST_REDIS_URL")
	e, err := stemredis.Open(context.Background(), url, stemredis.Options{Namespace: "ctltest"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	controltest.Run(t, func(t *testing.T) controltest.Engine { return e })
}
