package sqlite

import (
	"context"
	"database/sql"
	"slices"
	"sync"
	"time"
)

// minPoll is the pause between two looks at PRAGMA data_version right
// after a change was seen; it doubles up to the Engine's PollInterval while
// nothing changes.
const minPoll = 2 * time.Millisecond

// notifier wakes waiting claims: at once for publishes through the same
// Engine (notify), and through a watcher goroutine for commits by any
// other connection, in this process or another (PRAGMA data_version on a
// connection of its own changes whenever another connection commits).
//
// The watcher starts with the first waiting claim and pauses, without
// polling, while no claim waits. It keeps its connection, and the last
// data_version it read, across pauses, so a commit made while it paused is
// still seen as a change when it resumes; its first reading wakes every
// waiter, since a commit may have slipped in before it.
type notifier struct {
	db      *sql.DB
	maxPoll time.Duration

	mu       sync.Mutex
	closed   bool
	started  bool
	waiters  map[*waiter]struct{}
	kick     chan struct{} // tells a paused watcher that a claim waits
	stop     chan struct{} // closed by close
	loopDone chan struct{}
}

// waiter is one waiting claim. Its channel holds at most one pending
// wake-up; more are redundant.
type waiter struct {
	queues []string
	ch     chan struct{}
}

func newNotifier(db *sql.DB, maxPoll time.Duration) *notifier {
	return &notifier{
		db:       db,
		maxPoll:  maxPoll,
		waiters:  map[*waiter]struct{}{},
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
}

// register adds a waiter for queues and makes sure the watcher runs. It
// returns nil after close.
func (n *notifier) register(queues []string) *waiter {
	w := &waiter{queues: queues, ch: make(chan struct{}, 1)}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.waiters[w] = struct{}{}
	if !n.started {
		n.started = true
		go n.watch()
	}
	select {
	case n.kick <- struct{}{}:
	default:
	}
	return w
}

// unregister removes a waiter.
func (n *notifier) unregister(w *waiter) {
	n.mu.Lock()
	delete(n.waiters, w)
	n.mu.Unlock()
}

// notify wakes the waiters of any of queues (nil: every waiter).
func (n *notifier) notify(queues []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for w := range n.waiters {
		if queues != nil && !overlaps(w.queues, queues) {
			continue
		}
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

func overlaps(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// idle reports whether no claim waits.
func (n *notifier) idle() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.waiters) == 0
}

// watch polls PRAGMA data_version while claims wait, until close.
func (n *notifier) watch() {
	defer close(n.loopDone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var conn *sql.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	last := int64(-1)
	interval := minPoll
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if n.idle() {
			select {
			case <-n.stop:
				return
			case <-n.kick:
			}
			interval = minPoll
			continue
		}
		select {
		case <-n.stop:
			return
		case <-timer.C:
		}
		v, err := int64(-1), error(nil)
		if conn == nil {
			conn, err = n.db.Conn(ctx)
		}
		if err == nil {
			err = conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v)
		}
		switch {
		case err != nil:
			// The database is closing or failing: let the claims find out.
			if conn != nil {
				_ = conn.Close()
				conn = nil
			}
			last = -1
			n.notify(nil)
			interval = n.maxPoll
		case v != last:
			last = v
			n.notify(nil)
			interval = minPoll
		default:
			interval = min(2*interval, n.maxPoll)
		}
		timer.Reset(interval)
	}
}

// close stops the watcher and waits for it.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	started := n.started
	n.mu.Unlock()
	close(n.stop)
	if started {
		<-n.loopDone
	}
}
