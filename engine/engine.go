// Package engine opens the backends of a deployment from URLs: the broker,
// the result backend and the worker registry. One engine usually serves all
// three roles (the result backend URL defaults to the broker URL); when the
// URLs differ, each role is opened from its own URL.
//
// Supported schemes: sqlite:///abs/path.db (the embedded default: one file,
// shared safely by every process of one host), redis://, rediss:// (go-redis
// URL syntax: user, password, DB number, options), postgres://,
// postgresql:// (pgx syntax) and memory:// (in-process; engines opened with
// the same memory URL in one process share their state, which tests and
// single-process embedding use).
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	stempostgres "github.com/stemhq/stem/broker/postgres"
	stemredis "github.com/stemhq/stem/broker/redis"
	stemsqlite "github.com/stemhq/stem/broker/sqlite"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Schemes lists the URL schemes Open accepts.
var Schemes = []string{"redis", "rediss", "memory", "sqlite", "postgres", "postgresql"}

// Options say what to open.
type Options struct {
	BrokerURL string
	// ResultURL defaults to BrokerURL.
	ResultURL string
	Namespace string
	ResultTTL time.Duration
	// RedisRequireAOF makes a Redis engine refuse a server with AOF
	// persistence off (exit 78) instead of warning.
	RedisRequireAOF bool
	// Warn receives what an engine finds wrong at open but works with (a
	// Redis without AOF); nil drops it.
	Warn func(error)
}

// Engine holds the opened roles. Control and Pauses are nil when the
// broker's engine has no control transport.
type Engine struct {
	Broker   broker.Broker
	Results  result.Backend
	Registry registry.Registry
	Control  broker.ControlTransport
	Pauses   broker.PauseStore
	// Revokes is the broker engine's revoke store (closed with the engine).
	Revokes revoke.Store
	closers []io.Closer
}

// Close closes everything Open opened.
func (e *Engine) Close() error {
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		errs = append(errs, e.closers[i].Close())
	}
	return errors.Join(errs...)
}

// Open opens the engine(s) named by o and checks they answer. A bad URL is
// a *stem.ConfigError; an engine that does not answer wraps
// stem.ErrUnavailable and names the URL with its password redacted.
func Open(ctx context.Context, o Options) (*Engine, error) {
	if o.ResultURL == "" {
		o.ResultURL = o.BrokerURL
	}
	if o.Namespace == "" {
		o.Namespace = "stem"
	}
	b, err := open(ctx, o.BrokerURL, o)
	if err != nil {
		return nil, err
	}
	e := &Engine{Broker: b.broker, Results: b.results, Registry: b.registry, Revokes: b.revokes, closers: []io.Closer{b}}
	// Optional capabilities are asked for: an engine that carries control
	// messages and pause state says so by implementing the interfaces.
	if t, ok := b.control.(broker.ControlTransport); ok {
		e.Control = t
	}
	if p, ok := b.control.(broker.PauseStore); ok {
		e.Pauses = p
	}
	if o.ResultURL != o.BrokerURL {
		r, err := open(ctx, o.ResultURL, o)
		if err != nil {
			_ = e.Close()
			return nil, err
		}
		e.Results = r.results
		e.closers = append(e.closers, r)
	}
	return e, nil
}

type opened struct {
	broker   broker.Broker
	results  result.Backend
	registry registry.Registry
	control  any // asked for broker.ControlTransport and broker.PauseStore
	revokes  revoke.Store
	close    func() error
}

func (o *opened) Close() error { return o.close() }

// open opens the engine of raw. Its errors pass through
// stem.RedactError, so no driver's message shows raw's secrets.
func open(ctx context.Context, raw string, o Options) (*opened, error) {
	x, err := openURL(ctx, raw, o)
	return x, stem.RedactError(err, raw)
}

func openURL(ctx context.Context, raw string, o Options) (*opened, error) {
	if err := stem.CheckURL(raw, Schemes); err != nil {
		return nil, &stem.ConfigError{Key: "URL", Value: stem.RedactURL(raw), Msg: err.Error()}
	}
	u, _ := url.Parse(raw)
	switch strings.ToLower(u.Scheme) {
	case "memory":
		m := sharedMemory(raw, o)
		// The shared engine outlives this handle: closing it is a no-op.
		return &opened{broker: m, results: m, registry: m, control: m, revokes: revoke.SharedMemory(raw), close: func() error { return nil }}, nil
	case "sqlite":
		s, err := stemsqlite.Open(ctx, raw, stemsqlite.Options{Namespace: o.Namespace, ResultTTL: o.ResultTTL})
		if err != nil {
			return nil, err
		}
		return &opened{broker: s, results: s, registry: s, control: s, revokes: s.Revokes(), close: s.Close}, nil
	case "postgres", "postgresql":
		p, err := stempostgres.Open(ctx, raw, stempostgres.Options{Namespace: o.Namespace, ResultTTL: o.ResultTTL})
		if err != nil {
			return nil, err
		}
		return &opened{broker: p, results: p, registry: p, control: p, revokes: p.Revokes(), close: p.Close}, nil
	default:
		r, err := stemredis.Open(ctx, raw, stemredis.Options{Namespace: o.Namespace, ResultTTL: o.ResultTTL, RequireAOF: o.RedisRequireAOF, Warn: o.Warn})
		if err != nil {
			return nil, err
		}
		return &opened{broker: r, results: r, registry: r, control: r, revokes: r.Revokes(), close: r.Close}, nil
	}
}

var (
	memMu sync.Mutex
	mems  = map[string]*memory.Engine{}
)

// sharedMemory returns the process-wide memory engine of a URL and
// namespace.
func sharedMemory(raw string, o Options) *memory.Engine {
	key := raw + "|" + o.Namespace
	memMu.Lock()
	defer memMu.Unlock()
	if m, ok := mems[key]; ok {
		return m
	}
	m := memory.New(memory.Options{ResultTTL: o.ResultTTL})
	mems[key] = m
	return m
}

// RouteDriverLogs sends the messages database drivers print on their own
// (go-redis's dial failures and reconnects) to printf instead of stderr.
// The drivers' loggers are process-global: a program calls it once.
func RouteDriverLogs(printf func(format string, v ...any)) { stemredis.SetLogger(printf) }

// ErrNotConfigured is returned when no URL is given.
var ErrNotConfigured = fmt.Errorf("no broker URL configured")
