package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/brokertest"
	"github.com/stemhq/stem/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testURLEnv selects the Postgres server of the integration tests.
const testURLEnv = "STEM_TEST_POSTGRES_URL"

// testURL returns the test server's URL, or skips (fails under CI) when it
// is unset.
func testURL(tb testing.TB) string {
	tb.Helper()
	return testutil.EnvOrSkip(tb, testURLEnv)
}

// randomNamespace returns a namespace (and so a schema) no other test run
// uses.
func randomNamespace() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "stemtest_" + hex.EncodeToString(b[:])
}

// dropSchema drops a schema and everything in it, through a connection of
// its own.
func dropSchema(tb testing.TB, rawURL, schema string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		tb.Errorf("cleanup: connect to drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
		tb.Errorf("cleanup: drop schema %s: %v", schema, err)
	}
}

// openTestEngine opens an Engine on rawURL under a fresh random namespace
// (unless opts names one); at cleanup it closes the Engine and drops the
// schema.
func openTestEngine(tb testing.TB, rawURL string, opts Options) *Engine {
	tb.Helper()
	if opts.Namespace == "" {
		opts.Namespace = randomNamespace()
	}
	e, err := Open(tb.Context(), rawURL, opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", broker.RedactURL(rawURL), err)
	}
	tb.Cleanup(func() {
		_ = e.Close()
		dropSchema(tb, rawURL, e.Schema())
	})
	return e
}

// newTestEngine opens an Engine on the test server under a fresh
// namespace.
func newTestEngine(tb testing.TB, opts Options) *Engine {
	tb.Helper()
	return openTestEngine(tb, testURL(tb), opts)
}

func TestContract(t *testing.T) {
	raw := testURL(t)
	brokertest.Run(t, func(t *testing.T, opts brokertest.Options) brokertest.Engine {
		e := openTestEngine(t, raw, Options{ResultTTL: opts.ResultTTL, MaxConns: 4})
		return brokertest.Engine{Broker: e, Results: e, Registry: e}
	})
}
