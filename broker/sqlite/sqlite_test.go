package sqlite

import (
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker/brokertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newTestEngine opens an Engine on a fresh file in t.TempDir(), closed at
// cleanup.
func newTestEngine(tb testing.TB, opts Options) *Engine {
	tb.Helper()
	e, err := Open(tb.Context(), filepath.Join(tb.TempDir(), "stem.db"), opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

func TestContract(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, opts brokertest.Options) brokertest.Engine {
		e := newTestEngine(t, Options{ResultTTL: opts.ResultTTL})
		return brokertest.Engine{Broker: e, Results: e, Registry: e}
	})
}
