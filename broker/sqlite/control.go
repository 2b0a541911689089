package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/stemhq/stem/broker"
)

// The Engine is also the control transport and the pause store of a SQLite
// deployment (schema version 2, migrations/0002_control_plane.sql).
//
// SQLite has no push mechanism, so control messages are rows that
// subscribers poll for:
//
//   - Publishing (Broadcast, Send, Reply) is one write transaction that
//     counts the live subscribers of the channel, inserts the message into
//     stem_control when there is at least one, and prunes messages older
//     than ctlRetention. The count is the receiver count the requester
//     waits for (see Broadcast).
//   - Subscribing is one write transaction that records the highest message
//     id so far and registers the subscription in stem_control_subscribers,
//     so the subscription receives exactly the messages committed after it
//     is live, and every publish that counts it is one it receives.
//   - A live subscription polls with one indexed query for ids above the
//     last it saw on its channels ("all" and "w:<id>" for a worker,
//     "r:<id>" for a reply listener): every ctlIdlePoll, and every
//     ctlFastPoll for ctlFastFor after any control traffic it saw. A publish
//     through any Engine of this process on the same file wakes the
//     process's subscriptions at once. It refreshes its subscriber rows
//     every ctlSubRefresh; rows of a process that died without closing
//     expire after ctlSubTTL.
//   - Closing a subscription deletes its subscriber rows and the messages of
//     its private channel (a reply channel; a worker channel no other
//     subscription of the same worker listens on).
//
// Paused queues are rows of stem_paused_queues.
var (
	_ broker.ControlTransport = (*Engine)(nil)
	_ broker.PauseStore       = (*Engine)(nil)
)

// Control-plane timings.
const (
	// ctlIdlePoll is the pause between two polls of a subscription that
	// saw no control traffic lately.
	ctlIdlePoll = 10 * time.Millisecond
	// ctlFastPoll is the pause between two polls for ctlFastFor after a
	// subscription received a message or was woken in process (a requester
	// that just published expects replies soon).
	ctlFastPoll = 2 * time.Millisecond
	ctlFastFor  = 250 * time.Millisecond
	// ctlRetention is how long a message row is kept: publishes delete
	// older ones. A subscriber that falls further behind misses them (the
	// worker's periodic revoke re-sync heals a missed revoke).
	ctlRetention = time.Minute
	// ctlSubTTL bounds how long the subscriber rows of a process that died
	// without closing its subscriptions keep counting as receivers;
	// ctlSubRefresh is how often a live subscription renews them.
	ctlSubTTL     = 15 * time.Second
	ctlSubRefresh = 5 * time.Second
	// ctlBatch is the most messages one poll reads.
	ctlBatch = 256
)

// Control channel names within a control namespace.
const ctlBroadcast = "all"

func ctlWorker(id string) string     { return "w:" + id }
func ctlReply(replyTo string) string { return "r:" + replyTo }

// Every SQL statement of the control transport and the pause store, with
// its parameters and result.
const (
	// sqlCtlLastID is the highest message id so far (0 when none is kept;
	// AUTOINCREMENT never hands out a lower one again).
	// Returns: id.
	sqlCtlLastID = `SELECT coalesce(max(id), 0) FROM stem_control`

	// sqlCtlSubscribe registers (or renews) one channel of a subscription.
	// Params: ns, control namespace, channel, subscription id, expires_at (ms).
	sqlCtlSubscribe = `INSERT INTO stem_control_subscribers (ns, namespace, channel, sub_id, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (ns, namespace, channel, sub_id) DO UPDATE SET expires_at = excluded.expires_at`

	// sqlCtlUnsubscribe deletes a subscription's rows.
	// Params: ns, control namespace, subscription id.
	sqlCtlUnsubscribe = `DELETE FROM stem_control_subscribers WHERE ns = ? AND namespace = ? AND sub_id = ?`

	// sqlCtlDropChannel deletes the messages of a channel nobody listens on
	// any more.
	// Params: ns, control namespace, channel, now (ms).
	sqlCtlDropChannel = `DELETE FROM stem_control WHERE ns = ?1 AND namespace = ?2 AND channel = ?3
AND NOT EXISTS (SELECT 1 FROM stem_control_subscribers
    WHERE ns = ?1 AND namespace = ?2 AND channel = ?3 AND expires_at > ?4)`

	// sqlCtlSweepSubscribers deletes expired subscriber rows (of any
	// namespace).
	// Params: now (ms).
	sqlCtlSweepSubscribers = `DELETE FROM stem_control_subscribers WHERE expires_at <= ?`

	// sqlCtlPrune deletes up to 1000 messages older than the retention (of
	// any namespace).
	// Params: cutoff (ms).
	sqlCtlPrune = `DELETE FROM stem_control WHERE id IN (
    SELECT id FROM stem_control WHERE created_at < ? LIMIT 1000)`

	// sqlCtlCount counts the live subscribers of a channel.
	// Params: ns, control namespace, channel, now (ms).
	// Returns: count.
	sqlCtlCount = `SELECT count(*) FROM stem_control_subscribers
WHERE ns = ? AND namespace = ? AND channel = ? AND expires_at > ?`

	// sqlCtlInsert stores one message.
	// Params: ns, control namespace, channel, payload, created_at (ms).
	sqlCtlInsert = `INSERT INTO stem_control (ns, namespace, channel, payload, created_at) VALUES (?, ?, ?, ?, ?)`

	// sqlCtlPoll reads a subscription's new messages in order: two index
	// ranges of stem_control_channel (a reply listener passes its channel
	// twice).
	// Params: ns, control namespace, channel, channel, last id seen, limit.
	// Returns: id, payload.
	sqlCtlPoll = `SELECT id, payload FROM stem_control
WHERE ns = ?1 AND namespace = ?2 AND channel IN (?3, ?4) AND id > ?5
ORDER BY id LIMIT ?6`

	// sqlPause stores a pause, replacing the one of the same scope and
	// queue.
	// Params: ns, control namespace, worker scope, queue, paused_at
	// (sqliteTimeLayout), requested_by, sig.
	sqlPause = `INSERT INTO stem_paused_queues (ns, namespace, worker, queue, paused_at, requested_by, sig) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ns, namespace, worker, queue) DO UPDATE SET
    paused_at = excluded.paused_at, requested_by = excluded.requested_by, sig = excluded.sig`

	// sqlResume deletes the pause of one scope and queue.
	// Params: ns, control namespace, worker scope, queue.
	sqlResume = `DELETE FROM stem_paused_queues WHERE ns = ? AND namespace = ? AND worker = ? AND queue = ?`

	// sqlPaused lists a namespace's pauses by scope, then queue, in byte
	// order.
	// Params: ns, control namespace.
	// Returns: worker, queue, paused_at, requested_by, sig.
	sqlPaused = `SELECT worker, queue, paused_at, requested_by, sig FROM stem_paused_queues WHERE ns = ? AND namespace = ? ORDER BY worker, queue`
)

// checkControlNamespace rejects a control namespace that cannot be used.
func checkControlNamespace(op, namespace string) error {
	if namespace == "" || strings.ContainsAny(namespace, " \t\r\n") {
		return fmt.Errorf("sqlite engine: %s: control namespace %q is empty or contains whitespace", op, namespace)
	}
	return nil
}

// SubscribeWorker implements broker.ControlTransport: it receives the
// namespace's broadcasts and the messages sent to workerID, from the moment
// it returns.
func (e *Engine) SubscribeWorker(ctx context.Context, namespace, workerID string) (broker.Subscription, error) {
	if workerID == "" {
		return nil, errors.New("sqlite engine: subscribe: empty worker id")
	}
	return e.ctlSubscribe(ctx, "subscribe worker "+workerID, namespace, ctlBroadcast, ctlWorker(workerID))
}

// ListenReplies implements broker.ControlTransport: it receives the replies sent
// to replyTo from the moment it returns. Closing it deletes the channel's
// messages.
func (e *Engine) ListenReplies(ctx context.Context, namespace, replyTo string) (broker.Subscription, error) {
	if replyTo == "" {
		return nil, errors.New("sqlite engine: listen for replies: empty reply channel")
	}
	return e.ctlSubscribe(ctx, "listen for replies on "+replyTo, namespace, ctlReply(replyTo))
}

// Broadcast implements broker.ControlTransport. It returns how many
// subscriptions of the namespace were live when the message was committed:
// each of them receives it. A subscription of a process that died without
// closing it counts until its rows expire (ctlSubTTL, 15 s), so for that
// long a requester may wait for a reply that will not come (it still
// returns by its timeout).
func (e *Engine) Broadcast(ctx context.Context, namespace string, msg []byte) (int, error) {
	return e.ctlPublish(ctx, "control broadcast", namespace, ctlBroadcast, msg)
}

// Send implements broker.ControlTransport; the count is as for Broadcast (0 when
// the worker does not listen).
func (e *Engine) Send(ctx context.Context, namespace, workerID string, msg []byte) (int, error) {
	return e.ctlPublish(ctx, "control send to "+workerID, namespace, ctlWorker(workerID), msg)
}

// Reply implements broker.ControlTransport. A reply nobody listens for (the
// requester gave up) is not stored, and is an error the worker logs at
// debug level.
func (e *Engine) Reply(ctx context.Context, namespace, replyTo string, msg []byte) error {
	n, err := e.ctlPublish(ctx, "control reply", namespace, ctlReply(replyTo), msg)
	if err == nil && n == 0 {
		return fmt.Errorf("sqlite engine: nobody listens on reply channel %s (the requester gave up)", replyTo)
	}
	return err
}

// ctlPublish stores msg on channel when it has live subscribers, and
// returns how many, in one write transaction that also prunes old messages
// and expired subscribers. The subscriptions of this process on the same
// file are woken at once.
func (e *Engine) ctlPublish(ctx context.Context, op, namespace, channel string, msg []byte) (int, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	if err := checkControlNamespace(op, namespace); err != nil {
		return 0, err
	}
	if msg == nil {
		msg = []byte{}
	}
	now := nowMs()
	var n int
	err := e.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, sqlCtlPrune, now-ctlRetention.Milliseconds()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlCtlSweepSubscribers, now); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, sqlCtlCount, e.ns, namespace, channel, now).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		_, err := tx.ExecContext(ctx, sqlCtlInsert, e.ns, namespace, channel, msg, now)
		return err
	})
	if err != nil {
		return 0, e.fail(op, err)
	}
	if n > 0 {
		ctlHubs.wake(e.path)
	}
	return n, nil
}

// ctlSub is a live subscription: a goroutine (run) that polls for the
// subscription's messages and delivers them on ch.
type ctlSub struct {
	e         *Engine
	id        string
	namespace string
	channels  []string // registered as subscriber rows
	private   string   // the channel whose messages Close deletes ("" for none)
	query     [2]string

	last int64 // highest message id seen; owned by run

	ch   chan []byte
	wake chan struct{} // a publish in this process; holds at most one
	stop chan struct{}
	done chan struct{} // closed when run returned

	once     sync.Once
	chOnce   sync.Once
	closeErr error
}

// ctlSubscribe registers a subscription to channels and starts its poller.
// The first channel is a broadcast channel when there are two; the last is
// the subscription's private channel.
func (e *Engine) ctlSubscribe(ctx context.Context, op, namespace string, channels ...string) (*ctlSub, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	if err := checkControlNamespace(op, namespace); err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s := &ctlSub{
		e:         e,
		id:        hex.EncodeToString(b[:]),
		namespace: namespace,
		channels:  channels,
		private:   channels[len(channels)-1],
		query:     [2]string{channels[0], channels[len(channels)-1]},
		ch:        make(chan []byte, 64),
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	// One transaction: no message can commit between reading the last id
	// and becoming countable.
	err := e.write(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, sqlCtlLastID).Scan(&s.last); err != nil {
			return err
		}
		return s.register(ctx, tx, nowMs())
	})
	if err != nil {
		return nil, e.fail(op, err)
	}
	ctlHubs.add(e.path, s)
	go s.run()
	return s, nil
}

// register writes (or renews) the subscription's subscriber rows.
func (s *ctlSub) register(ctx context.Context, tx *sql.Tx, now int64) error {
	for _, c := range s.channels {
		if _, err := tx.ExecContext(ctx, sqlCtlSubscribe, s.e.ns, s.namespace, c, s.id, now+ctlSubTTL.Milliseconds()); err != nil {
			return err
		}
	}
	return nil
}

// C implements broker.Subscription.
func (s *ctlSub) C() <-chan []byte { return s.ch }

// Close implements broker.Subscription: it stops the poller, deletes the
// subscription's rows and its private channel's messages, and then closes
// C, so a consumer that sees C closed finds the rows gone. Closing twice
// is safe; after the Engine closed, only the poller is stopped (the rows
// expire).
func (s *ctlSub) Close() error {
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		defer s.closeCh()
		ctlHubs.remove(s.e.path, s)
		if s.e.checkOpen() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.e.opts.BusyTimeout+time.Second)
		defer cancel()
		err := s.e.write(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, sqlCtlUnsubscribe, s.e.ns, s.namespace, s.id); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, sqlCtlDropChannel, s.e.ns, s.namespace, s.private, nowMs())
			return err
		})
		if err != nil && s.e.checkOpen() == nil {
			s.closeErr = s.e.fail("close control subscription", err)
		}
	})
	return s.closeErr
}

// closeCh closes C once: at Close, or when the Engine closes.
func (s *ctlSub) closeCh() { s.chOnce.Do(func() { close(s.ch) }) }

// run polls until Close, or until the Engine's Close (it then closes ch
// itself).
func (s *ctlSub) run() {
	defer close(s.done)
	defer func() {
		select {
		case <-s.stop: // Close closes ch once the rows are gone
		default:
			s.closeCh() // the Engine closed
		}
	}()
	// The renewal runs beside the polls, so a write lock held by another
	// process never delays a delivery; it ends before run returns, so a
	// renewal can never follow Close's delete.
	var renew sync.WaitGroup
	defer renew.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
		case <-s.e.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	renew.Go(func() { s.renew(ctx) })
	var fastUntil time.Time
	timer := time.NewTimer(ctlIdlePoll)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			fastUntil = time.Now().Add(ctlFastFor)
		case <-timer.C:
		}
		got, err := s.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil && got > 0 {
			fastUntil = time.Now().Add(ctlFastFor)
		}
		next := ctlIdlePoll
		if time.Now().Before(fastUntil) {
			next = ctlFastPoll
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// renew renews the subscription's rows every ctlSubRefresh until ctx ends.
// A failed renewal is retried at the next tick; the rows outlive two
// failures (ctlSubTTL).
func (s *ctlSub) renew(ctx context.Context) {
	t := time.NewTicker(ctlSubRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = s.renewOnce(ctx)
		}
	}
}

// renewOnce writes the subscription's rows again, with a fresh expiry (and
// back, if they expired and were swept meanwhile).
func (s *ctlSub) renewOnce(ctx context.Context) error {
	return s.e.write(ctx, func(tx *sql.Tx) error { return s.register(ctx, tx, nowMs()) })
}

// poll reads and delivers the subscription's new messages, and returns how
// many it delivered. A read error (the database busy or failing) is
// retried at the next poll.
func (s *ctlSub) poll(ctx context.Context) (int, error) {
	got := 0
	for {
		type msg struct {
			id      int64
			payload []byte
		}
		rows, err := s.e.rdb.QueryContext(ctx, sqlCtlPoll, s.e.ns, s.namespace, s.query[0], s.query[1], s.last, ctlBatch)
		if err != nil {
			return got, err
		}
		var batch []msg
		for rows.Next() {
			var m msg
			if err := rows.Scan(&m.id, &m.payload); err != nil {
				_ = rows.Close()
				return got, err
			}
			batch = append(batch, m)
		}
		err = rows.Err()
		_ = rows.Close()
		if err != nil {
			return got, err
		}
		for _, m := range batch {
			select {
			case s.ch <- m.payload:
			case <-ctx.Done():
				return got, ctx.Err()
			}
			s.last = m.id
			got++
		}
		if len(batch) < ctlBatch {
			return got, nil
		}
	}
}

// ctlHub knows the live subscriptions of this process by database path, so
// a publish through any Engine of the process wakes them without waiting
// for their next poll.
type ctlHub struct {
	mu   sync.Mutex
	subs map[string]map[*ctlSub]struct{}
}

// ctlHubs is the process's hub. It holds only live subscriptions: an
// entry is removed when its last subscription closes.
var ctlHubs = &ctlHub{subs: map[string]map[*ctlSub]struct{}{}}

func (h *ctlHub) add(path string, s *ctlSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[path] == nil {
		h.subs[path] = map[*ctlSub]struct{}{}
	}
	h.subs[path][s] = struct{}{}
}

func (h *ctlHub) remove(path string, s *ctlSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[path], s)
	if len(h.subs[path]) == 0 {
		delete(h.subs, path)
	}
}

// wake wakes every subscription of the process on path: those the message
// is for read it at once, the others (a requester awaiting replies) poll
// fast for a while.
func (h *ctlHub) wake(path string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[path] {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// pauseTimeLayout is how paused_at is stored: fixed-width UTC text to the
// microsecond (the precision signatures cover).
const pauseTimeLayout = "2006-01-02T15:04:05.000000Z"

// Pause implements broker.PauseStore, in one write transaction.
func (e *Engine) Pause(ctx context.Context, pauses []broker.Pause) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	for _, p := range pauses {
		if err := checkControlNamespace("pause queues", p.Namespace); err != nil {
			return err
		}
	}
	if err := broker.ValidatePauses(pauses); err != nil {
		return fmt.Errorf("sqlite engine: %w", err)
	}
	if len(pauses) == 0 {
		return nil
	}
	err := e.write(ctx, func(tx *sql.Tx) error {
		for _, p := range pauses {
			if _, err := tx.ExecContext(ctx, sqlPause, e.ns, p.Namespace, p.Worker, p.Queue,
				p.PausedAt.UTC().Format(pauseTimeLayout), p.RequestedBy, p.Sig); err != nil {
				return err
			}
		}
		return nil
	})
	return e.fail(fmt.Sprintf("pause %d queue(s) of namespace %s", len(pauses), pauses[0].Namespace), err)
}

// Resume implements broker.PauseStore, in one write transaction.
func (e *Engine) Resume(ctx context.Context, namespace, worker string, queues []string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if err := checkControlNamespace("resume queues", namespace); err != nil {
		return err
	}
	if len(queues) == 0 {
		return nil
	}
	err := e.write(ctx, func(tx *sql.Tx) error {
		for _, q := range queues {
			if _, err := tx.ExecContext(ctx, sqlResume, e.ns, namespace, worker, q); err != nil {
				return err
			}
		}
		return nil
	})
	return e.fail(fmt.Sprintf("resume queues %s of namespace %s", strings.Join(queues, ","), namespace), err)
}

// Pauses implements broker.PauseStore.
func (e *Engine) Pauses(ctx context.Context, namespace string) ([]broker.Pause, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	op := "list paused queues"
	if err := checkControlNamespace(op, namespace); err != nil {
		return nil, err
	}
	rows, err := e.rdb.QueryContext(ctx, sqlPaused, e.ns, namespace)
	if err != nil {
		return nil, e.fail(op, err)
	}
	defer rows.Close()
	out := []broker.Pause{}
	for rows.Next() {
		p := broker.Pause{Namespace: namespace}
		var at string
		if err := rows.Scan(&p.Worker, &p.Queue, &at, &p.RequestedBy, &p.Sig); err != nil {
			return nil, e.fail(op, err)
		}
		if p.PausedAt, err = time.Parse(pauseTimeLayout, at); err != nil {
			return nil, fmt.Errorf("sqlite engine: %s: pause of queue %q: stored time %q: %w", op, p.Queue, at, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, e.fail(op, err)
	}
	return out, nil
}
