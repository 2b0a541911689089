package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrTaskRevoked is returned by TaskContext checkpoints once a terminate
// revoke applies to the running task. A handler should return it (or any
// error wrapping it) promptly; the task is then recorded as revoked.
var ErrTaskRevoked = errors.New("task revoked")

// TaskContext is what a handler receives. Its Context is cancelled when the
// task is terminated (revoke --terminate, soft shutdown) or runs past its
// time limit.
type TaskContext interface {
	// Context is cancelled on terminate or time limit.
	Context() context.Context
	// ID is the task id.
	ID() string
	// Name is the task name.
	Name() string
	// Queue the task was claimed from.
	Queue() string
	// Attempt is 0 on the first run, n after n retries.
	Attempt() int
	// Heartbeat tells the worker the task is alive. It returns
	// ErrTaskRevoked once a terminate revoke applies.
	Heartbeat() error
	// ExtendLease extends the task's lease to at least d from now (the
	// worker renews leases by itself; this is for tasks that know they need
	// longer). It returns ErrTaskRevoked once a terminate revoke applies.
	ExtendLease(d time.Duration) error
	// Progress records progress p (0..1) and optional JSON-marshalable data,
	// visible in `stem task status` and `stem worker inspect`. It returns
	// ErrTaskRevoked once a terminate revoke applies.
	Progress(p float64, data any) error
}

// HandlerFunc runs one task. The returned value is marshalled to JSON as the
// task's result.
type HandlerFunc func(tc TaskContext, args json.RawMessage) (any, error)

// TaskOptions are a handler's defaults; an envelope may override
// MaxRetries and TimeLimit.
type TaskOptions struct {
	// Queue is the default queue producers publish to.
	Queue string
	// MaxRetries is how many times a failed task is retried (0 = never).
	MaxRetries int
	// TimeLimit cancels the task's context after this long (0 = none).
	TimeLimit time.Duration
	// RetryBackoff is the base delay of the exponential backoff (default 1s).
	RetryBackoff time.Duration
	// RetryBackoffMax caps the backoff (default 10m).
	RetryBackoffMax time.Duration
	// Isolated runs the handler in a child process (the worker re-executes
	// its own binary): a terminate is forwarded to the child, whose
	// checkpoints then fail, and a child that does not stop within the
	// grace period is killed with its process group. The handler must be
	// registered in the child too: register it before cli.Main (or call
	// ServeChildIfRequested).
	Isolated bool
}

// WithDefaults fills unset fields.
func (o TaskOptions) WithDefaults() TaskOptions {
	ifZero(&o.Queue, "default")
	orDefault(&o.RetryBackoff, time.Second)
	orDefault(&o.RetryBackoffMax, 10*time.Minute)
	return o
}

// Handler is a registered task.
type Handler struct {
	Name    string
	Options TaskOptions
	Run     HandlerFunc
}

// Registry maps task names to handlers. It is safe for concurrent use.
// Lookups are lock-free (a copy-on-write map): every task does one.
type Registry struct {
	mu       sync.Mutex // serialises writers
	handlers atomic.Pointer[map[string]Handler]
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{}
	m := map[string]Handler{}
	r.handlers.Store(&m)
	return r
}

// Register adds a handler. It fails on an empty or duplicate name, or a nil
// function.
func (r *Registry) Register(name string, fn HandlerFunc, opts TaskOptions) error {
	if name == "" {
		return errors.New("register: empty task name")
	}
	if fn == nil {
		return fmt.Errorf("register %s: nil handler", name)
	}
	if opts.MaxRetries < 0 {
		return fmt.Errorf("register %s: negative MaxRetries %d", name, opts.MaxRetries)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.handlers.Load()
	if _, dup := old[name]; dup {
		return fmt.Errorf("register %s: a handler with this name already exists", name)
	}
	m := maps.Clone(old)
	m[name] = Handler{Name: name, Options: opts.WithDefaults(), Run: fn}
	r.handlers.Store(&m)
	return nil
}

// MustRegister is Register that panics on error, for program set-up.
func (r *Registry) MustRegister(name string, fn HandlerFunc, opts TaskOptions) {
	if err := r.Register(name, fn, opts); err != nil {
		panic(err)
	}
}

// Lookup returns the handler registered under name.
func (r *Registry) Lookup(name string) (Handler, bool) {
	h, ok := (*r.handlers.Load())[name]
	return h, ok
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	return slices.Sorted(maps.Keys(*r.handlers.Load()))
}
