// Package sqlite is the embedded stem engine: one SQLite file on the local
// host serves as the broker (broker.Broker), the result backend
// (result.Backend) and the worker registry (registry.Registry), with no
// server to install. It uses modernc.org/sqlite, a pure-Go SQLite, so the
// stem binary stays static (no cgo).
//
// # Sharing a file
//
// Several worker and producer processes on one host may open the same file
// at once. The file is in WAL mode, so readers never block the writer and
// the writer never blocks readers; writes are serialised by SQLite's own
// file lock (every write is a short BEGIN IMMEDIATE transaction, retried on
// a busy lock for up to Options.BusyTimeout). Inside one Engine, writes go
// through a single connection, so goroutines queue in process instead of
// spinning on the file lock. The file must live on a local file system:
// WAL needs shared memory (the -shm file), which network file systems do
// not provide.
//
// # Data model
//
// docs/sql-engines.md has the schema in full. A task is one row of
// stem_tasks: it is claimable when it is not leased and its ready_at (ms
// since the epoch: publish time, ETA or retry time) has come. Claiming sets
// lease_until and a fresh delivery token in place; Ack deletes the row,
// provided it still carries the delivery's token; an expired lease is
// cleared by the next claim of its queue, so the task goes back to its
// place at the head (it keeps its ready_at). Claims take a whole batch in
// one statement (UPDATE ... RETURNING over the oldest ready rows) inside
// one short write transaction, whatever the number of queues.
//
// # Waiting claims
//
// Claim with Wait is woken at once by a publish through the same Engine,
// and otherwise by a watcher that polls PRAGMA data_version (a counter
// SQLite bumps when another connection commits; reading it touches no
// table) every 2 ms, backing off to Options.PollInterval (20 ms) while
// nothing changes. Only when something changed, or when the earliest
// delayed task or lease deadline comes due, does the claim look again, and
// it takes the write lock only when a read shows a claimable task. An idle
// worker therefore costs a few cheap reads a second, and a publish from
// another process wakes it within about PollInterval.
//
// # Durability
//
// Options.Synchronous is FULL by default: every commit is fsynced before
// it returns, so a published task survives a power cut. NORMAL skips the
// fsync at commit (WAL is synced at checkpoints only): the file can never
// be corrupted, but a power cut (not a process crash) may roll back the
// last commits — a publish that was acknowledged to the producer can be
// lost, and an ack can be undone, making the task run again. FULL meets the
// throughput target (docs/sql-engines.md has the figures), so it is the
// default.
//
// # Schema
//
// The schema is created and upgraded by embedded, numbered migrations
// recorded in stem_schema_version, inside a write transaction, so several
// processes opening a new file at once are safe. A stem database is marked
// with PRAGMA application_id; Open refuses a file that is not one (another
// program's database, or not SQLite at all) and a database whose schema is
// newer than this binary, naming both versions.
//
// Namespaces (Options.Namespace) share one file: every row carries its
// namespace.
//
// Clocks: all times are the local clock in ms, which every process sharing
// the file reads, since they run on one host.
package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/fileperm"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Default option values.
const (
	// DefaultNamespace is the namespace rows are written under by default.
	DefaultNamespace = "stem"
	// DefaultResultTTL is how long result states are kept by default.
	DefaultResultTTL = 24 * time.Hour
	// DefaultDeadLetterCap is how many dead letters a queue keeps by
	// default; older ones are deleted.
	DefaultDeadLetterCap = 10000
	// DefaultBusyTimeout is how long a write waits for another process's
	// write lock before it fails with stem.ErrUnavailable.
	DefaultBusyTimeout = 10 * time.Second
	// DefaultPollInterval is the longest pause between two looks for
	// commits by other processes while a claim waits.
	DefaultPollInterval = 20 * time.Millisecond
	// SynchronousFull fsyncs every commit (the default).
	SynchronousFull = "full"
	// SynchronousNormal fsyncs only at WAL checkpoints: faster commits,
	// but a power cut may roll back the last ones (see the package doc).
	SynchronousNormal = "normal"
)

// Options configure an Engine. The zero value is usable.
type Options struct {
	// Namespace tags every row, so several deployments can share a file;
	// DefaultNamespace when empty.
	Namespace string
	// ResultTTL is how long a result state lives after its last write;
	// DefaultResultTTL when zero.
	ResultTTL time.Duration
	// DeadLetterCap is the most dead letters kept per queue;
	// DefaultDeadLetterCap when zero.
	DeadLetterCap int
	// BusyTimeout bounds the wait for another process's write lock;
	// DefaultBusyTimeout when zero. The URL parameter busy_timeout
	// overrides it.
	BusyTimeout time.Duration
	// Synchronous is SynchronousFull (default) or SynchronousNormal. The
	// URL parameter synchronous overrides it.
	Synchronous string
	// PollInterval is the longest pause between two looks for commits by
	// other processes while a claim waits; DefaultPollInterval when zero.
	PollInterval time.Duration
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
	if o.BusyTimeout == 0 {
		o.BusyTimeout = DefaultBusyTimeout
	}
	if o.Synchronous == "" {
		o.Synchronous = SynchronousFull
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	return o
}

// Validate reports whether o (after WithDefaults) is usable.
func (o Options) Validate() error {
	switch {
	case o.Namespace == "" || strings.ContainsAny(o.Namespace, " \t\r\n"):
		return fmt.Errorf("sqlite engine: namespace %q is empty or contains whitespace", o.Namespace)
	case o.ResultTTL < time.Millisecond:
		return fmt.Errorf("sqlite engine: result TTL %v is below 1ms", o.ResultTTL)
	case o.DeadLetterCap < 1:
		return fmt.Errorf("sqlite engine: dead-letter cap %d is below 1", o.DeadLetterCap)
	case o.BusyTimeout < time.Millisecond:
		return fmt.Errorf("sqlite engine: busy timeout %v is below 1ms", o.BusyTimeout)
	case o.Synchronous != SynchronousFull && o.Synchronous != SynchronousNormal:
		return fmt.Errorf("sqlite engine: synchronous %q is neither %q nor %q", o.Synchronous, SynchronousFull, SynchronousNormal)
	case o.PollInterval < time.Millisecond || o.PollInterval > time.Second:
		return fmt.Errorf("sqlite engine: poll interval %v is not between 1ms and 1s", o.PollInterval)
	}
	return nil
}

// readConns is the size of the read pool (Get, List, PendingCount, the
// waiting claims' looks, and the watcher's connection).
const readConns = 4

// Engine is the SQLite broker, result backend and worker registry. It is
// safe for concurrent use, and several Engines (in one or several
// processes) may share one file. Close closes all three roles at once.
type Engine struct {
	path string // absolute path of the database file
	opts Options
	ns   string

	wdb *sql.DB // one connection: every write transaction
	rdb *sql.DB // query_only connections for reads

	tagBase string        // random per Engine, starts every token
	tagSeq  atomic.Uint64 // makes every token tag of this Engine unique

	lastSweep atomic.Int64 // ms of the last sweep of expired results

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

// ErrNotStemDatabase is wrapped by Open's error for a file that is not a
// stem database: another program's SQLite database, or not SQLite at all.
var ErrNotStemDatabase = stem.Incompatible(errors.New("not a stem database"))

// ErrSchemaTooNew is wrapped by Open's error for a database whose schema
// was written by a newer stem than this binary.
var ErrSchemaTooNew = stem.Incompatible(errors.New("database schema is newer than this stem binary"))

// Open opens (creating it if needed) the stem database named by target and
// brings its schema up to date. target is a file path (absolute or relative
// to the working directory) or a URL:
//
//	sqlite:///var/lib/stem/stem.db      absolute path
//	sqlite:relative/stem.db             path relative to the working directory
//	sqlite:///srv/stem.db?synchronous=normal&busy_timeout=30s
//
// The host part must be empty (or "localhost"); "sqlite://stem.db" is
// refused because "stem.db" would be a host name. The URL parameters
// synchronous (full or normal) and busy_timeout (a Go duration) override
// the matching Options. The directory must exist and be writable (SQLite
// creates the -wal and -shm files beside the database); Open does not
// create it. Errors name the path.
func Open(ctx context.Context, target string, opts Options) (*Engine, error) {
	path, err := parseTarget(target, &opts)
	if err != nil {
		return nil, stem.Incompatible(err)
	}
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, stem.Incompatible(err)
	}
	if err := checkPath(path); err != nil {
		return nil, stem.Incompatible(err)
	}
	if err := createPrivate(path); err != nil {
		return nil, stem.Incompatible(err)
	}
	if err := probe(ctx, path, opts); err != nil {
		return nil, err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	e := &Engine{
		path:    path,
		opts:    opts,
		ns:      opts.Namespace,
		tagBase: hex.EncodeToString(b[:]),
		done:    make(chan struct{}),
	}
	e.wdb, err = sql.Open("sqlite", dsn(path, opts, true))
	if err != nil {
		return nil, fmt.Errorf("sqlite engine: open database %s: %w", path, err)
	}
	e.wdb.SetMaxOpenConns(1)
	e.wdb.SetMaxIdleConns(1)
	e.wdb.SetConnMaxLifetime(0)
	e.wdb.SetConnMaxIdleTime(0)
	e.rdb, err = sql.Open("sqlite", dsn(path, opts, false))
	if err != nil {
		_ = e.wdb.Close()
		return nil, fmt.Errorf("sqlite engine: open database %s: %w", path, err)
	}
	e.rdb.SetMaxOpenConns(readConns)
	e.rdb.SetMaxIdleConns(readConns)
	e.rdb.SetConnMaxIdleTime(0)
	if err := e.migrate(ctx); err != nil {
		_ = e.wdb.Close()
		_ = e.rdb.Close()
		return nil, err
	}
	e.wake = newNotifier(e.rdb, opts.PollInterval)
	return e, nil
}

// parseTarget turns Open's target into an absolute file path, applying the
// URL parameters to opts.
func parseTarget(target string, opts *Options) (string, error) {
	if target == "" {
		return "", errors.New("sqlite engine: empty database path")
	}
	raw := target
	if !strings.HasPrefix(strings.ToLower(target), "sqlite:") {
		return absPath(target)
	}
	u, err := url.Parse(target)
	if err != nil {
		return "", fmt.Errorf("sqlite engine: invalid URL %q: %v (want sqlite:///absolute/path.db or sqlite:relative/path.db)", raw, unwrapURLError(err))
	}
	if u.User != nil {
		return "", fmt.Errorf("sqlite engine: URL %s: a SQLite URL takes no user or password", stem.RedactURL(raw))
	}
	var path string
	switch {
	case u.Opaque != "":
		// sqlite:relative/path.db
		p, err := url.PathUnescape(u.Opaque)
		if err != nil {
			return "", fmt.Errorf("sqlite engine: URL %q: %v", raw, err)
		}
		path = p
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("sqlite engine: URL %q names host %q; use sqlite:///absolute/path.db or sqlite:relative/path.db", raw, u.Host)
	default:
		path = u.Path
	}
	if path == "" {
		return "", fmt.Errorf("sqlite engine: URL %q names no database file", raw)
	}
	for key, vals := range u.Query() {
		v := vals[len(vals)-1]
		switch key {
		case "synchronous":
			opts.Synchronous = strings.ToLower(v)
		case "busy_timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return "", fmt.Errorf("sqlite engine: URL %q: busy_timeout %q is not a duration such as 10s", raw, v)
			}
			opts.BusyTimeout = d
		default:
			return "", fmt.Errorf("sqlite engine: URL %q: unknown parameter %q (known: synchronous, busy_timeout)", raw, key)
		}
	}
	return absPath(path)
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("sqlite engine: database path %q: %w", p, err)
	}
	return a, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// wOK and rOK are access(2) modes.
const (
	rOK = 0x4
	wOK = 0x2
	xOK = 0x1
)

// checkPath explains, before SQLite gives its terse "unable to open
// database file", why path cannot be a database: a missing directory, a
// path component that is not a directory, a directory or file this user
// cannot write.
func checkPath(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("sqlite engine: database %s: a component of directory %s is not a directory", path, dir)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("sqlite engine: database %s: directory %s does not exist (create it first)", path, dir)
	case err != nil:
		return fmt.Errorf("sqlite engine: database %s: %w", path, err)
	case !st.IsDir():
		return fmt.Errorf("sqlite engine: database %s: %s is not a directory", path, dir)
	}
	if err := syscall.Access(dir, wOK|xOK); err != nil {
		return fmt.Errorf("sqlite engine: database %s: directory %s is not writable by this user (uid %d): %w; SQLite needs to create the -wal and -shm files beside the database",
			path, dir, os.Getuid(), err)
	}
	st, err = os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil // created by the first connection
	case err != nil:
		return fmt.Errorf("sqlite engine: database %s: %w", path, err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("sqlite engine: database %s is not a regular file (%s)", path, st.Mode().Type())
	}
	if err := syscall.Access(path, rOK|wOK); err != nil {
		return fmt.Errorf("sqlite engine: database %s is not readable and writable by this user (uid %d): %w", path, os.Getuid(), err)
	}
	return nil
}

// createPrivate creates the database file, empty, mode 0640 minus the
// umask, before SQLite does: SQLite would create it 0644 (world-readable),
// and gives its -wal and -shm files the database's mode. An existing
// database keeps its mode, unless it is world-writable: then it loses the
// world-write bit (see package fileperm).
// A database path may be a symbolic link (unlike a pidfile's).
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, fileperm.CreateMode())
	created := err == nil
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a dangling symlink: SQLite reports it
		}
	}
	if err != nil {
		return fmt.Errorf("sqlite engine: database %s: %w", path, unwrapPathError(err))
	}
	defer f.Close()
	if err := fileperm.Fix(f, created); err != nil {
		return fmt.Errorf("sqlite engine: database %s: %w", path, err)
	}
	return nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// dsn is the modernc.org/sqlite data source name of path: a file: URI
// (so a path may hold '?' or '#') with the pragmas every connection runs
// when it opens. WAL mode is not among them: it is a property of the file,
// set once by probe. Write connections begin their transactions with BEGIN
// IMMEDIATE, so a transaction takes the write lock before it reads and
// never fails half-way on a lock upgrade; read connections are query_only.
func dsn(path string, o Options, write bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10)+")")
	q.Add("_pragma", "synchronous("+strings.ToUpper(o.Synchronous)+")")
	// Bound the WAL file left after a checkpoint.
	q.Add("_pragma", "journal_size_limit(67108864)")
	if write {
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + escapePath(path) + "?" + q.Encode()
}

// escapePath percent-encodes the characters SQLite's URI parser gives a
// meaning to.
func escapePath(p string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return r.Replace(p)
}

// Path returns the absolute path of the database file.
func (e *Engine) Path() string { return e.path }

// Namespace returns the namespace in use.
func (e *Engine) Namespace() string { return e.ns }

// Close stops the watcher, wakes waiting claims (they return
// broker.ErrClosed) and closes the database connections. Closing twice is
// safe.
func (e *Engine) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
		e.wake.close()
		err = errors.Join(e.wdb.Close(), e.rdb.Close())
	})
	if err != nil {
		return fmt.Errorf("sqlite engine: close database %s: %w", e.path, err)
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

// nextTag returns a tag unique to this Engine and call; delivery tokens
// are "<tag>.<row id>".
func (e *Engine) nextTag() string {
	return e.tagBase + "-" + strconv.FormatUint(e.tagSeq.Add(1), 36)
}

// fail wraps an error of a database call for operation op: broker.ErrClosed
// after Close, the context's error as is, stem.ErrUnavailable when the
// database is busy (another process held the write lock past the busy
// timeout) or the disk failed (I/O error, disk full, cannot open), and the
// plain cause otherwise. The path is named.
func (e *Engine) fail(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case e.closed.Load():
		return fmt.Errorf("sqlite engine: %s: %w", op, broker.ErrClosed)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("sqlite engine at %s: %s: %w", e.path, op, err)
	case isUnavailable(err):
		return fmt.Errorf("sqlite engine at %s: %s: %w: %w", e.path, op, stem.ErrUnavailable, err)
	}
	return fmt.Errorf("sqlite engine at %s: %s: %w", e.path, op, err)
}

// sqliteCode returns the primary result code of a SQLite error, or 0.
func sqliteCode(err error) int {
	var se *msqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// isUnavailable reports whether err means "try again later".
func isUnavailable(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
		sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL:
		return true
	}
	return errors.Is(err, sql.ErrConnDone)
}

// nowMs is the current time in ms since the epoch.
func nowMs() int64 { return time.Now().UnixMilli() }
