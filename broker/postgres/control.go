package postgres

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/stemhq/stem/broker"
)

// The Engine is also the control transport and the pause store of a
// Postgres deployment (schema version 2, migrations/0002_control_plane.sql).
//
// Control messages travel by LISTEN/NOTIFY. Every subscription holds a
// dedicated connection (outside the pool, application_name "<name>-control")
// that LISTENs on its channels — the namespace's broadcast channel and its
// worker channel, or its reply channel — and holds a shared session-level
// advisory lock per channel. Publishing counts the holders of the channel's
// lock in pg_locks and sends pg_notify, in one statement: every counted
// subscription was listening before the count (it locks after LISTEN took
// effect), so it receives the message, and a subscription whose connection
// died is not counted (the server released its locks). That count is the
// receiver count a requester waits for, as with Redis PUBLISH.
//
// Channel names are identifiers of at most 63 bytes: the schema (cut to 24
// bytes), ".ctl.", a kind letter (b broadcast, w worker, r reply) and a
// 96-bit hash of schema, namespace, kind and worker or reply id; the lock
// key is 64 more bits of the same hash. A payload that fits a notification
// (valid UTF-8, no NUL, under ctlInlineMax bytes) is sent as "=<message>";
// a larger one is stored in control_payloads and sent as "@<row id>", and
// receivers read the row. Stored payloads are deleted after ctlRetention by
// later large publishes, and a reply channel's when its listener closes.
//
// When a subscription's connection breaks (a server restart,
// pg_terminate_backend), it reconnects with backoff (50 ms to 2 s) and
// listens and locks again; messages sent in the gap are lost, as with Redis
// pub/sub (a worker's periodic revoke re-sync heals a missed revoke).
//
// Paused queues are rows of paused_queues.
var (
	_ broker.ControlTransport = (*Engine)(nil)
	_ broker.PauseStore       = (*Engine)(nil)
)

// Control-plane limits and timings.
const (
	// ctlInlineMax is the largest message sent inside a notification (the
	// server refuses payloads of 8000 bytes or more; one byte is the
	// "=" marker).
	ctlInlineMax = 7900
	// ctlRetention is how long a stored payload is kept.
	ctlRetention = time.Minute
	// ctlBackoffMin and ctlBackoffMax bound the pause between two attempts
	// to re-establish a subscription's connection.
	ctlBackoffMin = 50 * time.Millisecond
	ctlBackoffMax = 2 * time.Second
	// ctlSchemaPrefix is how many bytes of the schema name start a channel
	// name (for people reading pg_stat_activity and pg_listening_channels).
	ctlSchemaPrefix = 24
)

// Channel kinds.
const (
	ctlKindBroadcast = "b"
	ctlKindWorker    = "w"
	ctlKindReply     = "r"
)

// ctlChannel is one control channel: its NOTIFY channel name and the
// advisory lock key its subscribers hold.
type ctlChannel struct {
	name string
	key  int64
}

// ctlChannelFor derives the channel of kind for id (a worker id, a reply
// id, or "" for the broadcast channel) in a control namespace.
func (e *Engine) ctlChannelFor(namespace, kind, id string) ctlChannel {
	h := sha256.Sum256([]byte(e.opts.Schema + "\x00" + namespace + "\x00" + kind + "\x00" + id))
	prefix := e.opts.Schema
	if len(prefix) > ctlSchemaPrefix {
		cut := ctlSchemaPrefix
		for cut > 0 && !utf8.RuneStart(prefix[cut]) {
			cut--
		}
		prefix = prefix[:cut]
	}
	return ctlChannel{
		name: prefix + ".ctl." + kind + "." + hex.EncodeToString(h[:12]),
		key:  int64(binary.BigEndian.Uint64(h[12:20])),
	}
}

// Every SQL statement of the control transport and the pause store, with
// its parameters and result. {schema} is the Engine's quoted schema.
const (
	// tplCtlReceivers counts the live subscriptions of a channel: the
	// sessions of this database holding its advisory lock (a bigint key
	// shows in pg_locks as classid = high half, objid = low half,
	// objsubid = 1). Used as a CTE by the publish statements.
	// Params: $2 high half, $3 low half of the key (int8).
	tplCtlReceivers = `c AS (SELECT count(*) AS n FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = $2::int8::oid AND objid = $3::int8::oid)`

	// tplCtlNotify sends a message inside the notification, when the
	// channel has receivers.
	// Params: $1 channel text, $2 and $3 the lock key's halves, $4 "="
	// and the message, text.
	// Returns: the receiver count.
	tplCtlNotify = `WITH ` + tplCtlReceivers + `,
nt AS (SELECT pg_notify($1::text, $4::text) FROM c WHERE c.n > 0)
SELECT c.n FROM c, (SELECT count(*) FROM nt) AS sent`

	// tplCtlStore stores a message and notifies its row id, when the
	// channel has receivers.
	// Params: $1 channel text, $2 and $3 the lock key's halves, $4 the
	// message bytea.
	// Returns: the receiver count.
	tplCtlStore = `WITH ` + tplCtlReceivers + `,
ins AS (INSERT INTO {schema}.control_payloads (channel, payload) SELECT $1::text, $4::bytea FROM c WHERE c.n > 0 RETURNING id),
nt AS (SELECT pg_notify($1::text, '@' || ins.id) FROM ins)
SELECT c.n FROM c, (SELECT count(*) FROM nt) AS sent`

	// tplCtlPrune deletes stored payloads older than the retention.
	// Params: $1 retention in ms int8.
	tplCtlPrune = `DELETE FROM {schema}.control_payloads WHERE created_at < now() - $1::int8 * interval '1 millisecond'`

	// tplCtlFetch reads a stored payload.
	// Params: $1 row id int8.
	// Returns: payload.
	tplCtlFetch = `SELECT payload FROM {schema}.control_payloads WHERE id = $1`

	// tplCtlDropChannel deletes a channel's stored payloads.
	// Params: $1 channel text.
	tplCtlDropChannel = `DELETE FROM {schema}.control_payloads WHERE channel = $1`

	// tplPause stores pauses, each replacing the one of the same scope
	// and queue.
	// Params: $1 control namespaces text[], $2 worker scopes text[], $3
	// queues text[], $4 paused_at timestamptz[], $5 requested_by text[],
	// $6 sig text[] (one element per pause).
	tplPause = `INSERT INTO {schema}.paused_queues (namespace, worker, queue, paused_at, requested_by, sig)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
ON CONFLICT (namespace, worker, queue) DO UPDATE SET
    paused_at = excluded.paused_at, requested_by = excluded.requested_by, sig = excluded.sig`

	// tplResume deletes the pauses of one scope for queues.
	// Params: $1 control namespace text, $2 worker scope text, $3 queues text[].
	tplResume = `DELETE FROM {schema}.paused_queues WHERE namespace = $1 AND worker = $2 AND queue = ANY($3::text[])`

	// tplPaused lists a namespace's pauses by scope, then queue, in byte
	// order.
	// Params: $1 control namespace text.
	// Returns: worker, queue, paused_at, requested_by, sig.
	tplPaused = `SELECT worker, queue, paused_at, requested_by, sig FROM {schema}.paused_queues WHERE namespace = $1
ORDER BY worker COLLATE "C", queue COLLATE "C"`
)

// ctlSQL fills in the Engine's schema.
func (e *Engine) ctlSQL(tpl string) string {
	return strings.ReplaceAll(tpl, "{schema}", pgx.Identifier{e.opts.Schema}.Sanitize())
}

// checkControlNamespace rejects a control namespace that cannot be used.
func checkControlNamespace(op, namespace string) error {
	if namespace == "" || strings.ContainsAny(namespace, " \t\r\n\x00") {
		return fmt.Errorf("postgres engine: %s: control namespace %q is empty or contains whitespace or NUL", op, namespace)
	}
	return nil
}

// SubscribeWorker implements broker.ControlTransport: it receives the
// namespace's broadcasts and the messages sent to workerID, from the moment
// it returns.
func (e *Engine) SubscribeWorker(ctx context.Context, namespace, workerID string) (broker.Subscription, error) {
	op := "subscribe worker " + workerID
	if workerID == "" {
		return nil, errors.New("postgres engine: subscribe: empty worker id")
	}
	if err := checkControlNamespace(op, namespace); err != nil {
		return nil, err
	}
	return e.ctlSubscribe(ctx, op, "",
		e.ctlChannelFor(namespace, ctlKindBroadcast, ""), e.ctlChannelFor(namespace, ctlKindWorker, workerID))
}

// ListenReplies implements broker.ControlTransport: it receives the replies sent
// to replyTo from the moment it returns. Closing it deletes the channel's
// stored payloads.
func (e *Engine) ListenReplies(ctx context.Context, namespace, replyTo string) (broker.Subscription, error) {
	op := "listen for replies on " + replyTo
	if replyTo == "" {
		return nil, errors.New("postgres engine: listen for replies: empty reply channel")
	}
	if err := checkControlNamespace(op, namespace); err != nil {
		return nil, err
	}
	ch := e.ctlChannelFor(namespace, ctlKindReply, replyTo)
	return e.ctlSubscribe(ctx, op, ch.name, ch)
}

// Broadcast implements broker.ControlTransport. It returns how many
// subscriptions of the namespace were listening (see the type's comment):
// each of them receives the message.
func (e *Engine) Broadcast(ctx context.Context, namespace string, msg []byte) (int, error) {
	return e.ctlPublish(ctx, "control broadcast", namespace, e.ctlChannelFor(namespace, ctlKindBroadcast, ""), msg)
}

// Send implements broker.ControlTransport; the count is as for Broadcast (0 when
// the worker does not listen).
func (e *Engine) Send(ctx context.Context, namespace, workerID string, msg []byte) (int, error) {
	return e.ctlPublish(ctx, "control send to "+workerID, namespace, e.ctlChannelFor(namespace, ctlKindWorker, workerID), msg)
}

// Reply implements broker.ControlTransport. A reply nobody listens for (the
// requester gave up) is not sent, and is an error the worker logs at debug
// level.
func (e *Engine) Reply(ctx context.Context, namespace, replyTo string, msg []byte) error {
	n, err := e.ctlPublish(ctx, "control reply", namespace, e.ctlChannelFor(namespace, ctlKindReply, replyTo), msg)
	if err == nil && n == 0 {
		return fmt.Errorf("postgres engine: nobody listens on reply channel %s (the requester gave up)", replyTo)
	}
	return err
}

// inlinable reports whether msg can travel inside a notification.
func inlinable(msg []byte) bool {
	return len(msg) <= ctlInlineMax && utf8.Valid(msg) && bytes.IndexByte(msg, 0) < 0
}

// ctlPublish sends msg on ch when it has receivers and returns how many, in
// one round trip (one implicit transaction).
func (e *Engine) ctlPublish(ctx context.Context, op, namespace string, ch ctlChannel, msg []byte) (int, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	if err := checkControlNamespace(op, namespace); err != nil {
		return 0, err
	}
	hi, lo := int64(uint64(ch.key)>>32), int64(uint32(ch.key))
	var n int64
	if inlinable(msg) {
		if err := e.pool.QueryRow(ctx, tplCtlNotify, ch.name, hi, lo, "="+string(msg)).Scan(&n); err != nil {
			return 0, e.fail(op, err)
		}
		return int(n), nil
	}
	if msg == nil {
		msg = []byte{}
	}
	var b pgx.Batch
	b.Queue(e.ctlSQL(tplCtlPrune), ctlRetention.Milliseconds())
	b.Queue(e.ctlSQL(tplCtlStore), ch.name, hi, lo, msg)
	br := e.pool.SendBatch(ctx, &b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return 0, e.fail(op, err)
	}
	if err := br.QueryRow().Scan(&n); err != nil {
		return 0, e.fail(op, err)
	}
	if err := br.Close(); err != nil {
		return 0, e.fail(op, err)
	}
	return int(n), nil
}

// ctlSub is a live subscription: a goroutine (run) that owns the
// subscription's connection, re-establishes it when it breaks, and
// delivers the notifications on ch.
type ctlSub struct {
	e        *Engine
	cfg      *pgx.ConnConfig
	channels []ctlChannel
	reply    string // the reply channel whose stored payloads Close deletes

	ch     chan []byte
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	live     bool   // listening on a live connection
	sessions uint64 // how many times LISTEN took effect (tests)

	once     sync.Once
	chOnce   sync.Once
	closeErr error
}

// ctlSubscribe connects, listens and locks, then starts the subscription's
// goroutine.
func (e *Engine) ctlSubscribe(ctx context.Context, op, reply string, channels ...ctlChannel) (*ctlSub, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	cfg := e.listen.cfg.Copy()
	cfg.RuntimeParams["application_name"] = strings.TrimSuffix(cfg.RuntimeParams["application_name"], "-listener") + "-control"
	s := &ctlSub{e: e, cfg: cfg, channels: channels, reply: reply, ch: make(chan []byte, 64), done: make(chan struct{})}
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, e.fail(op, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(rctx, conn)
	return s, nil
}

// connect opens the subscription's connection, LISTENs on its channels and
// then takes their advisory locks (in that order, so whoever counts a lock
// reaches a listener), in one round trip.
func (s *ctlSub) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return nil, err
	}
	var q strings.Builder
	for _, ch := range s.channels {
		q.WriteString("LISTEN " + pgx.Identifier{ch.name}.Sanitize() + ";\n")
	}
	q.WriteString("SELECT ")
	for i, ch := range s.channels {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("pg_advisory_lock_shared(" + strconv.FormatInt(ch.key, 10) + ")")
	}
	if _, err := conn.Exec(ctx, q.String()); err != nil {
		closeConn(conn)
		return nil, err
	}
	s.setLive(true)
	return conn, nil
}

// release stops listening and drops the advisory locks of a connection
// that is still usable (a failure means it is not, and the server
// releases everything when it notices).
func release(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, "UNLISTEN *; SELECT pg_advisory_unlock_all()")
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

func (s *ctlSub) setLive(live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live = live
	if live {
		s.sessions++
	}
}

// state reports whether the subscription listens, and how many times
// LISTEN took effect.
func (s *ctlSub) state() (live bool, sessions uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live, s.sessions
}

// C implements broker.Subscription.
func (s *ctlSub) C() <-chan []byte { return s.ch }

// Close implements broker.Subscription: it closes the connection (which
// releases the locks), deletes a reply channel's stored payloads, and then
// closes C. Closing twice is safe.
func (s *ctlSub) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		defer s.closeCh()
		if s.reply == "" || s.e.checkOpen() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := s.e.pool.Exec(ctx, s.e.ctlSQL(tplCtlDropChannel), s.reply); err != nil && s.e.checkOpen() == nil {
			s.closeErr = s.e.fail("close reply listener", err)
		}
	})
	return s.closeErr
}

// run serves the subscription until Close (which cancels ctx) or the
// Engine's Close, re-connecting with backoff whenever the connection
// breaks. When the Engine closes first, it closes ch itself.
func (s *ctlSub) run(ctx context.Context, conn *pgx.Conn) {
	defer close(s.done)
	defer func() {
		if ctx.Err() == nil {
			s.closeCh() // the Engine closed; Close, if it comes, finds ch closed
		}
	}()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.e.done:
		case <-sctx.Done():
		}
		cancel()
	}()
	backoff := ctlBackoffMin
	for {
		if conn == nil {
			var err error
			if conn, err = s.connect(sctx); err != nil {
				t := time.NewTimer(backoff)
				select {
				case <-sctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				backoff = min(2*backoff, ctlBackoffMax)
				continue
			}
			backoff = ctlBackoffMin
		}
		s.session(sctx, conn)
		s.setLive(false)
		if sctx.Err() != nil {
			// Unlock before returning: the server releases a closed
			// connection's locks only once its backend noticed, and a
			// closed subscription must not be counted any more.
			release(conn)
			closeConn(conn)
			return
		}
		closeConn(conn)
		conn = nil
	}
}

// closeCh closes C once: at Close, or when the Engine closes.
func (s *ctlSub) closeCh() { s.chOnce.Do(func() { close(s.ch) }) }

// session delivers the notifications of one connection until it fails or
// ctx ends. A silent connection is pinged every listenHealthEvery.
func (s *ctlSub) session(ctx context.Context, conn *pgx.Conn) {
	for {
		wctx, cancel := context.WithTimeout(ctx, listenHealthEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			msg, ok := s.decode(ctx, conn, n.Payload)
			if !ok {
				continue
			}
			select {
			case s.ch <- msg:
			case <-ctx.Done():
				return
			}
		case wctx.Err() != nil:
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				return
			}
		default:
			return
		}
	}
}

// decode turns a notification payload into the message: inline ("=") or
// stored ("@<id>", read on the subscription's connection). A stored
// payload already pruned, or a payload of another format, is skipped.
func (s *ctlSub) decode(ctx context.Context, conn *pgx.Conn, payload string) ([]byte, bool) {
	switch {
	case strings.HasPrefix(payload, "="):
		return []byte(payload[1:]), true
	case strings.HasPrefix(payload, "@"):
		id, err := strconv.ParseInt(payload[1:], 10, 64)
		if err != nil {
			return nil, false
		}
		var msg []byte
		if err := conn.QueryRow(ctx, s.e.ctlSQL(tplCtlFetch), id).Scan(&msg); err != nil {
			return nil, false
		}
		return msg, true
	}
	return nil, false
}

// Pause implements broker.PauseStore, in one statement.
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
		return fmt.Errorf("postgres engine: %w", err)
	}
	if len(pauses) == 0 {
		return nil
	}
	n := len(pauses)
	nss, workers, queues, by, sigs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, p := range pauses {
		nss[i], workers[i], queues[i], by[i], sigs[i] = p.Namespace, p.Worker, p.Queue, p.RequestedBy, p.Sig
		at[i] = p.PausedAt.UTC()
	}
	if _, err := e.pool.Exec(ctx, e.ctlSQL(tplPause), nss, workers, queues, at, by, sigs); err != nil {
		return e.fail(fmt.Sprintf("pause %d queue(s) of namespace %s", n, pauses[0].Namespace), err)
	}
	return nil
}

// Resume implements broker.PauseStore, in one statement.
func (e *Engine) Resume(ctx context.Context, namespace, worker string, queues []string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	op := "resume queues"
	if err := checkControlNamespace(op, namespace); err != nil {
		return err
	}
	if len(queues) == 0 {
		return nil
	}
	if _, err := e.pool.Exec(ctx, e.ctlSQL(tplResume), namespace, worker, queues); err != nil {
		return e.fail(fmt.Sprintf("%s %s of namespace %s", op, strings.Join(queues, ","), namespace), err)
	}
	return nil
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
	rows, err := e.pool.Query(ctx, e.ctlSQL(tplPaused), namespace)
	if err != nil {
		return nil, e.fail(op, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (broker.Pause, error) {
		p := broker.Pause{Namespace: namespace}
		err := r.Scan(&p.Worker, &p.Queue, &p.PausedAt, &p.RequestedBy, &p.Sig)
		p.PausedAt = p.PausedAt.UTC()
		return p, err
	})
	if err != nil {
		return nil, e.fail(op, err)
	}
	if out == nil {
		out = []broker.Pause{}
	}
	return out, nil
}
