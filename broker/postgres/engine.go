// Package postgres is the stem engine on PostgreSQL (11 or later), through
// pgx v5: one Engine serves as the broker (broker.Broker), the result
// backend (result.Backend) and the worker registry (registry.Registry).
//
// # Data model
//
// Every table lives in one schema per namespace (Options.Schema, by
// default the namespace, "stem"), so deployments and tests sharing a
// database never see each other's rows; docs/sql-engines.md has the
// schema in full. A task is a row of tasks: claimable when it is not leased
// and its ready_at (publish time, ETA or retry time) has come. All times
// are the database server's clock, so workers on several hosts agree on
// lease deadlines and ETAs whatever their own clocks say.
//
// # Round trips
//
// Every call is one round trip, whatever the batch size: arrays are passed
// whole (unnest), and calls of several statements are sent as one pgx
// batch, which Postgres runs as one implicit transaction. PublishBatch is
// an INSERT ... SELECT FROM unnest plus a pg_notify per queue. Claim clears
// the expired leases of its queues and leases the oldest ready rows of all
// of them, in priority order, with one UPDATE over a SELECT ... FOR UPDATE
// SKIP LOCKED, so concurrent claimers never wait for each other and never
// take the same row. Ack is one DELETE; Nack, ExtendLease and Set one
// statement per kind of item.
//
// # Waiting claims
//
// Every publish, retry and requeue sends NOTIFY on the namespace's channel
// with the queue as payload. Each Engine keeps one dedicated listening
// connection (started by the first waiting claim, outside the pool),
// fanned out to its waiting claims in process; a woken claim retries at
// once. When the listening connection breaks (a server restart) it is
// re-established with backoff, and every waiter is woken once it listens
// again, since notifications sent in the gap are lost; meanwhile waiters
// poll every 250 ms. A waiting claim also retries when the earliest ETA
// or lease deadline of its queues comes due.
//
// # Failures
//
// pgxpool replaces broken connections by itself. A call that fails for
// want of a connection (refused, reset, server shutting down or starting)
// returns an error wrapping stem.ErrUnavailable, naming the URL with its
// password redacted, so the caller retries; nothing is dropped silently.
// Leased deliveries whose worker lost its connection come back when their
// lease expires.
//
// # Schema
//
// The schema is created and upgraded by embedded, numbered migrations
// recorded in <schema>.schema_version, in one transaction under an
// advisory lock. Open refuses a schema that holds tables but no
// schema_version (not stem's) and a schema newer than this binary, naming
// both versions.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Default option values.
const (
	// DefaultNamespace is the default namespace, and so the default schema.
	DefaultNamespace = "stem"
	// DefaultResultTTL is how long result states are kept by default.
	DefaultResultTTL = 24 * time.Hour
	// DefaultDeadLetterCap is how many dead letters a queue keeps by
	// default; older ones are deleted.
	DefaultDeadLetterCap = 10000
	// DefaultMaxConns is the default size of the connection pool (the
	// listening connection comes on top).
	DefaultMaxConns = 8
	// DefaultApplicationName is the application_name of the Engine's
	// connections unless the URL sets one; the listening connection adds
	// "-listener".
	DefaultApplicationName = "stem"
)

// maxSchemaLen bounds a schema name so that the notification channel
// "<schema>.wake" fits Postgres's 63-byte identifiers.
const maxSchemaLen = 58

// Options configure an Engine. The zero value is usable.
type Options struct {
	// Namespace names the deployment; DefaultNamespace when empty.
	Namespace string
	// Schema holds every table of the Engine; the namespace when empty.
	// It is created if missing (which needs the CREATE privilege on the
	// database).
	Schema string
	// ResultTTL is how long a result state lives after its last write;
	// DefaultResultTTL when zero.
	ResultTTL time.Duration
	// DeadLetterCap is the most dead letters kept per queue;
	// DefaultDeadLetterCap when zero.
	DeadLetterCap int
	// MaxConns is the pool size unless the URL sets pool_max_conns;
	// DefaultMaxConns when zero.
	MaxConns int32
}

// WithDefaults returns o with every unset field given its default.
func (o Options) WithDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Schema == "" {
		o.Schema = o.Namespace
	}
	if o.ResultTTL == 0 {
		o.ResultTTL = DefaultResultTTL
	}
	if o.DeadLetterCap == 0 {
		o.DeadLetterCap = DefaultDeadLetterCap
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	return o
}

// Validate reports whether o (after WithDefaults) is usable.
func (o Options) Validate() error {
	switch {
	case o.Schema == "" || len(o.Schema) > maxSchemaLen || strings.ContainsAny(o.Schema, " \t\r\n\"\x00"):
		return fmt.Errorf("postgres engine: schema %q (from the namespace unless set) is empty, longer than %d bytes, or contains whitespace or quotes", o.Schema, maxSchemaLen)
	case strings.HasPrefix(strings.ToLower(o.Schema), "pg_"):
		return fmt.Errorf("postgres engine: schema %q: names starting with pg_ are reserved by Postgres", o.Schema)
	case o.ResultTTL < time.Millisecond:
		return fmt.Errorf("postgres engine: result TTL %v is below 1ms", o.ResultTTL)
	case o.DeadLetterCap < 1:
		return fmt.Errorf("postgres engine: dead-letter cap %d is below 1", o.DeadLetterCap)
	case o.MaxConns < 1:
		return fmt.Errorf("postgres engine: max conns %d is below 1", o.MaxConns)
	}
	return nil
}

// Engine is the Postgres broker, result backend and worker registry. It
// is safe for concurrent use. Close closes all three roles at once.
type Engine struct {
	pool    *pgxpool.Pool
	opts    Options
	url     string // redacted, for errors
	channel string // the NOTIFY channel of the schema
	q       statements

	tagBase string        // random per Engine, starts every token
	tagSeq  atomic.Uint64 // makes every token tag of this Engine unique

	lastSweep atomic.Int64 // unix ms of the last sweep of expired rows

	closed    atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	listen    *listener
}

// The roles an Engine provides.
var (
	_ broker.Broker     = (*Engine)(nil)
	_ result.Backend    = (*Engine)(nil)
	_ registry.Registry = (*Engine)(nil)
)

// ErrNotStemSchema is wrapped by Open's error for a schema that holds
// tables but is not stem's.
var ErrNotStemSchema = stem.Incompatible(errors.New("not a stem schema"))

// ErrSchemaTooNew is wrapped by Open's error for a schema written by a
// newer stem than this binary.
var ErrSchemaTooNew = stem.Incompatible(errors.New("database schema is newer than this stem binary"))

// Open connects to the Postgres server at rawURL, checks it answers, and
// creates or upgrades the Engine's schema. rawURL is what pgx accepts:
//
//	postgres://user:password@host:5432/dbname?sslmode=disable
//	postgresql://user@host/dbname?pool_max_conns=16&application_name=stem-alpha
//
// including libpq's parameters (sslmode, sslrootcert, connect_timeout,
// ...) and pgxpool's pool_* parameters. A server that cannot be reached
// yields an error wrapping stem.ErrUnavailable; errors never show the
// password.
func Open(ctx context.Context, rawURL string, opts Options) (*Engine, error) {
	x, err := open(ctx, rawURL, opts)
	// Drivers may quote the URL or its password in their errors.
	return x, stem.RedactError(err, rawURL)
}

func open(ctx context.Context, rawURL string, opts Options) (*Engine, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	shown := stem.RedactURL(rawURL)
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		msg := stem.RedactError(err, rawURL).Error()
		return nil, stem.Incompatible(fmt.Errorf("postgres engine: invalid URL %s: %s (want postgres://[user[:password]@]host[:port]/dbname[?param=value...])", shown, msg))
	}
	if !strings.Contains(rawURL, "pool_max_conns") {
		cfg.MaxConns = opts.MaxConns
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = DefaultApplicationName
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres engine at %s: %w", shown, err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	quoted := pgx.Identifier{opts.Schema}.Sanitize()
	e := &Engine{
		pool:    pool,
		opts:    opts,
		url:     shown,
		channel: opts.Schema + ".wake",
		q:       newStatements(quoted),
		tagBase: hex.EncodeToString(b[:]),
		done:    make(chan struct{}),
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, e.fail("connect", err)
	}
	if err := e.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	lcfg := cfg.ConnConfig.Copy()
	lcfg.RuntimeParams["application_name"] = cfg.ConnConfig.RuntimeParams["application_name"] + "-listener"
	e.listen = newListener(lcfg, e.channel)
	return e, nil
}

// Namespace returns the namespace in use.
func (e *Engine) Namespace() string { return e.opts.Namespace }

// Schema returns the schema holding the Engine's tables.
func (e *Engine) Schema() string { return e.opts.Schema }

// Close stops the listening connection, wakes waiting claims (they return
// broker.ErrClosed) and closes the pool. Closing twice is safe.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
		e.listen.close()
		e.pool.Close()
	})
	return nil
}

// checkOpen returns broker.ErrClosed after Close.
func (e *Engine) checkOpen() error {
	if e.closed.Load() {
		return broker.ErrClosed
	}
	return nil
}

// nextTag returns a tag unique to this Engine and call; delivery tokens
// are "<tag>.<row id>".
func (e *Engine) nextTag() string {
	return e.tagBase + "-" + strconv.FormatUint(e.tagSeq.Add(1), 36)
}

// fail wraps an error of a database call for operation op: broker.ErrClosed
// after Close, the context's error as is, stem.ErrUnavailable when no
// connection could serve (see isUnavailable), and the plain cause
// otherwise. The URL is redacted.
func (e *Engine) fail(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case e.closed.Load():
		return fmt.Errorf("postgres engine: %s: %w", op, broker.ErrClosed)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("postgres engine at %s: %s: %w", e.url, op, err)
	case isUnavailable(err):
		return fmt.Errorf("postgres engine at %s: %s: %w: %w", e.url, op, stem.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres engine at %s: %s: %w", e.url, op, err)
}

// isUnavailable reports whether err means "try again later": no
// connection (refused, reset, EOF, timeout), or a server reply of class 08
// (connection exception), 57P01-57P03 (shutting down, crashed, starting
// up), 53300 (too many connections), 40001 or 40P01 (serialization
// failure, deadlock: the statement may simply be retried).
func isUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch c := pgErr.Code; {
		case strings.HasPrefix(c, "08"), c == "57P01", c == "57P02", c == "57P03", c == "53300", c == "40001", c == "40P01":
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr), pgconn.Timeout(err), pgconn.SafeToRetry(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return true
	}
	// pgx reports a connection that died mid-call as "conn closed" or
	// "unexpected EOF" without a typed error.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "unexpected EOF") ||
		strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")
}
