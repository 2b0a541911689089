// Package redis is the distributed stem engine on Redis (6.2 or later): one
// Engine serves as the broker (broker.Broker), the result backend
// (result.Backend) and the worker registry (registry.Registry).
//
// Data model (docs/redis-keys.md has the full key layout; keys.go builds
// every name): each queue has a ready LIST of envelope JSON, a delayed ZSET
// scored by ETA, a leased ZSET whose members are the delivery tokens scored
// by lease deadline, and a capped dead-letter LIST. A delivery token is the
// leased member itself, "<unique tag>|<envelope JSON>", so acking is one
// ZREM, extending a lease is a ZADD XX in place, and an expired lease can be
// put back from the member alone.
//
// Round trips: PublishBatch is one MULTI/EXEC pipeline (RPUSH and ZADD per
// queue, plus one PUBLISH per queue to wake waiting claims). Claim is one
// EVALSHA of a script that takes all the claimed queues at once, so it
// respects Max across queues in priority order exactly, in a single round
// trip; it also promotes due delayed tasks and reclaims expired leases.
// Ack is one ZREM per queue, pipelined. Nack and ExtendLease are one script
// call each, whatever the number of deliveries and queues. Result Set is
// one script call per 500 states; Get is one GET.
//
// Cluster: a queue's keys share a hash tag, but the claim, nack and extend
// scripts take the keys of several queues in one call, which Redis Cluster
// forbids across slots. This engine targets a single Redis server (or a
// replicated primary); a cluster variant would split those calls per slot
// (for Claim: ask the first queue for Max and the rest only if it returned
// fewer, a second round trip).
//
// Claim with Wait: every publish also PUBLISHes on the queue's wake channel.
// The engine keeps one lazily started subscription, shared by all waiting
// claims and fanned out to them in process; a woken claim retries at once.
// A waiting claim also retries at the earliest delayed ETA or lease deadline
// the claim script reported, and every 250 ms while its subscription is not
// yet confirmed, so a lost wake-up costs latency, never a task.
//
// Clocks: lease deadlines, expired-lease reclaims and retry times use the
// server's clock (TIME inside the scripts), so a client's skew never
// shortens or stretches a lease. ETAs given by producers are absolute
// times from the producer's clock.
//
// Data loss: every delivery token carries its queue's epoch (a random
// value kept in the queue's epoch key). When the server loses its data (a
// restart without persistence), the epoch key is gone and the next script
// sets a new one; a worker still holding a delivery of the old epoch gets
// it restored, leased to it, at its next renewal, and its retries and
// hand-backs are applied rather than dropped (see extendScript).
//
// Failures: go-redis reconnects by itself. A command that fails on the
// network returns an error wrapping stem.ErrUnavailable, with the URL's
// password redacted, so the caller retries; nothing is dropped silently.
// Leased deliveries whose worker lost its connection come back when their
// lease expires.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Default option values.
const (
	// DefaultNamespace is the default key prefix.
	DefaultNamespace = "stem"
	// DefaultResultTTL is how long result states are kept by default.
	DefaultResultTTL = 24 * time.Hour
	// DefaultDeadLetterCap is how many dead letters a queue keeps by
	// default; older ones are trimmed.
	DefaultDeadLetterCap = 10000
)

// promoteLimit bounds how many delayed tasks, and how many expired leases,
// one claim moves per queue, so one script call stays short however large
// a backlog became due at once.
const promoteLimit = 1000

// Options configure an Engine.
type Options struct {
	// Namespace prefixes every key and channel; DefaultNamespace when
	// empty. It may not contain whitespace, braces or ':'.
	Namespace string
	// ResultTTL is how long a result state lives after its last write;
	// DefaultResultTTL when zero.
	ResultTTL time.Duration
	// DeadLetterCap is the most dead letters kept per queue;
	// DefaultDeadLetterCap when zero.
	DeadLetterCap int
	// RequireAOF makes Open refuse a server with AOF persistence off
	// (ErrAOFRequired, exit 78) instead of warning about it.
	RequireAOF bool
	// Warn receives what Open finds wrong but works with: a server with
	// AOF off, whose crash loses tasks. Nil drops the warnings.
	Warn func(error)
}

// WithDefaults returns o with every unset field given its default.
func (o Options) WithDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.ResultTTL == 0 {
		o.ResultTTL = DefaultResultTTL
	}
	if o.DeadLetterCap == 0 {
		o.DeadLetterCap = DefaultDeadLetterCap
	}
	return o
}

// Validate reports whether o (after WithDefaults) is usable.
func (o Options) Validate() error {
	switch {
	case o.Namespace == "" || strings.ContainsAny(o.Namespace, " \t\r\n{}:*?[]"):
		return fmt.Errorf("redis engine: namespace %q is empty or contains whitespace, braces, ':' or glob characters", o.Namespace)
	case o.ResultTTL < time.Millisecond:
		return fmt.Errorf("redis engine: result TTL %v is below 1ms", o.ResultTTL)
	case o.DeadLetterCap < 1:
		return fmt.Errorf("redis engine: dead-letter cap %d is below 1", o.DeadLetterCap)
	}
	return nil
}

// Engine is the Redis broker, result backend and worker registry. It is
// safe for concurrent use. Close closes all three roles at once.
type Engine struct {
	client     *goredis.Client
	ownsClient bool
	opts       Options
	keys       keys
	url        string // redacted, for errors

	tagBase string        // random per Engine, starts every token tag
	tagSeq  atomic.Uint64 // makes every tag of this Engine unique

	closed    atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	wake      *notifier
}

// The roles an Engine provides.
var (
	_ broker.Broker     = (*Engine)(nil)
	_ result.Backend    = (*Engine)(nil)
	_ registry.Registry = (*Engine)(nil)
)

// Open connects to the Redis server at rawURL (redis:// or rediss://, with
// optional user, password and database number, as goredis.ParseURL reads
// them) and checks it with a PING. A server that cannot be reached yields an
// error wrapping stem.ErrUnavailable; errors never show the password.
// Open reads INFO persistence: with AOF off (a crash loses the tasks) it
// warns through opts.Warn, or refuses with ErrAOFRequired when
// opts.RequireAOF is set.
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
	ro, err := goredis.ParseURL(rawURL)
	if err != nil {
		msg := stem.RedactError(err, rawURL).Error()
		return nil, stem.Incompatible(fmt.Errorf("redis engine: invalid URL %s: %s (want redis://[user:password@]host:port/db or rediss://...)", shown, msg))
	}
	client := goredis.NewClient(ro)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis engine at %s: connect: %w: %w", shown, stem.ErrUnavailable, err)
	}
	if err := checkServerVersion(ctx, client, shown); err != nil {
		_ = client.Close()
		return nil, err
	}
	if err := checkAOF(ctx, client, shown, opts); err != nil {
		_ = client.Close()
		return nil, err
	}
	return newEngine(client, true, shown, opts), nil
}

// MinServerVersion is the oldest Redis the engine runs on: the claim
// script pops many elements with one LPOP (Redis 6.2).
var MinServerVersion = [2]int{6, 2}

// checkServerVersion refuses a server older than MinServerVersion with an
// error that names both versions (exit 78). A server that does not report
// its version (a proxy, say) is given the benefit of the doubt.
func checkServerVersion(ctx context.Context, client *goredis.Client, shown string) error {
	info, err := client.Info(ctx, "server").Result()
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(info, "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:")
		if !ok {
			continue
		}
		if !versionAtLeast(v, MinServerVersion) {
			return stem.Incompatible(fmt.Errorf("redis engine at %s: server version %s is older than %d.%d, which stem needs", shown, v, MinServerVersion[0], MinServerVersion[1]))
		}
		return nil
	}
	return nil
}

// versionAtLeast reports whether a "major.minor.patch" version is at least
// min; an unparsable version passes.
func versionAtLeast(v string, min [2]int) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return true
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return true
	}
	return major > min[0] || (major == min[0] && minor >= min[1])
}

// New builds an Engine on an existing client, for tests and for programs
// that configure go-redis themselves. The Engine does not close the
// client: the caller does, after closing the Engine.
func New(client *goredis.Client, opts Options) (*Engine, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o := client.Options()
	shown := fmt.Sprintf("redis://%s/%d", o.Addr, o.DB)
	return newEngine(client, false, shown, opts), nil
}

func newEngine(client *goredis.Client, owns bool, shown string, opts Options) *Engine {
	var b [6]byte
	_, _ = rand.Read(b[:])
	e := &Engine{
		client:     client,
		ownsClient: owns,
		opts:       opts,
		keys:       keys{ns: opts.Namespace},
		url:        shown,
		tagBase:    hex.EncodeToString(b[:]),
		done:       make(chan struct{}),
	}
	e.wake = newNotifier(client)
	return e
}

// Namespace returns the key prefix in use.
func (e *Engine) Namespace() string { return e.opts.Namespace }

// Close stops the wake-up subscription, wakes waiting claims (they return
// broker.ErrClosed), ends the control subscriptions and, when the Engine
// was built by Open, closes the client. Closing twice is safe.
func (e *Engine) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
		e.wake.close()
		if e.ownsClient {
			err = e.client.Close()
		}
	})
	if err != nil {
		return fmt.Errorf("redis engine at %s: close: %w", e.url, err)
	}
	return nil
}

// checkOpen returns broker.ErrClosed after Close.
func (e *Engine) checkOpen() error {
	if e.closed.Load() {
		return broker.ErrClosed
	}
	return nil
}

// nextTag returns a tag unique to this Engine and call, made of [0-9a-z.]
// only, to prefix delayed members and delivery tokens.
func (e *Engine) nextTag() string {
	return e.tagBase + "." + strconv.FormatUint(e.tagSeq.Add(1), 36)
}

// fail wraps an error of a Redis call for operation op: broker.ErrClosed
// after Close, the context's error as is, stem.ErrUnavailable for network
// failures and servers that cannot serve (loading, read-only replica,
// failover), and the plain cause otherwise. The URL is redacted.
func (e *Engine) fail(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case e.closed.Load():
		return fmt.Errorf("redis engine: %s: %w", op, broker.ErrClosed)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("redis engine at %s: %s: %w", e.url, op, err)
	case isUnavailable(err):
		return fmt.Errorf("redis engine at %s: %s: %w: %w", e.url, op, stem.ErrUnavailable, err)
	}
	return fmt.Errorf("redis engine at %s: %s: %w", e.url, op, err)
}

// unavailablePrefixes are server replies meaning "not now", not "wrong".
var unavailablePrefixes = []string{"LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "BUSY", "MISCONF"}

// isUnavailable reports whether err means the server could not be reached
// or cannot serve right now.
func isUnavailable(err error) bool {
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range unavailablePrefixes {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// Not a server reply: dial errors, EOF, resets, timeouts, pool
	// exhaustion. All mean "try again later".
	return true
}

// SetLogger makes go-redis print its own messages (dial failures, pool and
// pub/sub reconnects) through printf. go-redis's logger is process-global.
func SetLogger(printf func(format string, v ...any)) { goredis.SetLogger(driverLog(printf)) }

type driverLog func(format string, v ...any)

func (l driverLog) Printf(_ context.Context, format string, v ...any) { l(format, v...) }
