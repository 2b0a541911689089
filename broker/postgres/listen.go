package postgres

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener timings.
const (
	// listenHealthEvery is how long the listening connection may stay
	// silent before it is pinged, so a dead server is noticed even when
	// nothing is published.
	listenHealthEvery = 15 * time.Second
	// listenBackoffMin and listenBackoffMax bound the pause between two
	// attempts to re-establish the listening connection.
	listenBackoffMin = 50 * time.Millisecond
	listenBackoffMax = 2 * time.Second
)

// listener owns the Engine's one LISTEN connection (outside the pool) and
// fans its notifications out to waiting claims by queue. It is started by
// the first waiting claim and runs until close, re-connecting with backoff
// whenever the connection breaks. Each time it (re)starts listening it
// wakes every waiter, since notifications sent while it was not listening
// are lost; until then waiters poll (see unconfirmedPoll). No pgx type
// leaves this file's Engine methods.
type listener struct {
	cfg     *pgx.ConnConfig
	channel string

	mu       sync.Mutex
	closed   bool
	started  bool
	live     bool   // LISTEN is in effect on a live connection
	sessions uint64 // how many times LISTEN took effect (tests)
	waiters  map[*waiter]struct{}
	cancel   context.CancelFunc
	loopDone chan struct{}
}

// waiter is one waiting claim. Its channel holds at most one pending
// wake-up; more are redundant.
type waiter struct {
	queues []string
	ch     chan struct{}
}

func newListener(cfg *pgx.ConnConfig, channel string) *listener {
	return &listener{cfg: cfg, channel: channel, waiters: map[*waiter]struct{}{}, loopDone: make(chan struct{})}
}

// register adds a waiter for queues, starting the listener if needed. It
// returns nil after close.
func (l *listener) register(queues []string) *waiter {
	w := &waiter{queues: queues, ch: make(chan struct{}, 1)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.waiters[w] = struct{}{}
	if !l.started {
		l.started = true
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel = cancel
		go l.run(ctx)
	}
	return w
}

// unregister removes a waiter.
func (l *listener) unregister(w *waiter) {
	l.mu.Lock()
	delete(l.waiters, w)
	l.mu.Unlock()
}

// listening reports whether notifications currently arrive.
func (l *listener) listening() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live
}

// sessionCount returns how many times LISTEN took effect.
func (l *listener) sessionCount() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sessions
}

// wake wakes the waiters of queue ("" wakes every waiter).
func (l *listener) wake(queue string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for w := range l.waiters {
		if queue != "" && !slices.Contains(w.queues, queue) {
			continue
		}
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

func (l *listener) setLive(live bool) {
	l.mu.Lock()
	l.live = live
	if live {
		l.sessions++
	}
	l.mu.Unlock()
}

// run connects, listens and dispatches until ctx ends, re-connecting with
// backoff.
func (l *listener) run(ctx context.Context) {
	defer close(l.loopDone)
	backoff := listenBackoffMin
	for ctx.Err() == nil {
		err := l.session(ctx)
		l.setLive(false)
		if ctx.Err() != nil {
			return
		}
		// Let waiters notice (they poll while not live), then retry.
		l.wake("")
		if err == nil {
			backoff = listenBackoffMin
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// session runs one listening connection until it fails or ctx ends. It
// returns nil when LISTEN had taken effect (so the next attempt starts
// with a short backoff).
func (l *listener) session(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, l.cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return err
	}
	l.setLive(true)
	l.wake("") // anything published before LISTEN took effect
	for {
		wctx, cancel := context.WithTimeout(ctx, listenHealthEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			l.wake(n.Payload)
		case ctx.Err() != nil:
			return nil
		case wctx.Err() != nil:
			// Silence: check the connection is alive.
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				return nil
			}
		default:
			return nil
		}
	}
}

// close stops the listener and waits for it.
func (l *listener) close() {
	l.mu.Lock()
	l.closed = true
	started, cancel := l.started, l.cancel
	l.mu.Unlock()
	if started {
		cancel()
		<-l.loopDone
	}
	l.wake("")
}
