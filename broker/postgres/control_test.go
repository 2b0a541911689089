package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/internal/testutil"
)

// TestControlChannelNames checks that channel names fit Postgres's 63-byte
// identifiers whatever the schema and ids, differ per namespace, kind and
// id, and that lock keys differ too.
func TestControlChannelNames(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 29) // 58 bytes, a rune cut at byte 24 would split
	seen := map[string]bool{}
	keys := map[int64]bool{}
	for _, schema := range []string{"stem", long} {
		e := &Engine{opts: Options{Schema: schema}}
		for _, ns := range []string{"stem", "prod"} {
			for _, c := range []ctlChannel{
				e.ctlChannelFor(ns, ctlKindBroadcast, ""),
				e.ctlChannelFor(ns, ctlKindWorker, "alpha@host"),
				e.ctlChannelFor(ns, ctlKindWorker, strings.Repeat("w", 500)),
				e.ctlChannelFor(ns, ctlKindReply, "0193c1f0-7d2e-7000-8000-000000000001"),
			} {
				if len(c.name) > 63 || !strings.HasPrefix(c.name, schema[:min(len(schema), 10)]) || seen[c.name] || keys[c.key] {
					t.Errorf("channel %q (%d bytes, key %d): too long, without the schema, or not unique", c.name, len(c.name), c.key)
				}
				if !json.Valid([]byte(`"` + c.name + `"`)) {
					t.Errorf("channel %q is not valid UTF-8", c.name)
				}
				seen[c.name], keys[c.key] = true, true
			}
		}
	}
}

// TestControlLargeMessages sends a revoke of 500 task ids (far above a
// notification's 8000 bytes) and a binary message through the payload
// table; the reply channel's stored rows go when its listener closes, and
// old rows are pruned by the next large publish.
func TestControlLargeMessages(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	w, err := e.SubscribeWorker(ctx, "ns", "w@h")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var ids []string
	for i := range 500 {
		ids = append(ids, fmt.Sprintf("0193c1f0-7d2e-7000-8000-%012d", i))
	}
	big, _ := json.Marshal(map[string]any{"type": "revoke", "args": map[string]any{"ids": ids}})
	if len(big) < 8000 {
		t.Fatalf("test message of %d bytes is not large", len(big))
	}
	binary := []byte{0, 1, 2, 0xff, 0xfe}
	for _, msg := range [][]byte{big, binary, []byte("small")} {
		if n, err := e.Broadcast(ctx, "ns", msg); err != nil || n != 1 {
			t.Fatalf("Broadcast of %d bytes = %d, %v", len(msg), n, err)
		}
		select {
		case got := <-w.C():
			if string(got) != string(msg) {
				t.Fatalf("received %d bytes, want the %d sent", len(got), len(msg))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message of %d bytes not received", len(msg))
		}
	}
	count := func() int {
		var n int
		if err := e.pool.QueryRow(ctx, e.ctlSQL(`SELECT count(*) FROM {schema}.control_payloads`)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("%d stored payloads, want 2", n)
	}

	l, err := e.ListenReplies(ctx, "ns", "req")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Reply(ctx, "ns", "req", big); err != nil {
		t.Fatal(err)
	}
	if got := <-l.C(); string(got) != string(big) {
		t.Fatal("large reply garbled")
	}
	if n := count(); n != 3 {
		t.Fatalf("%d stored payloads, want 3", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d stored payloads after the reply listener closed, want 2 (the broadcasts')", n)
	}
	// Nobody listens: a large reply is refused and not stored.
	if err := e.Reply(ctx, "ns", "req", big); err == nil {
		t.Fatal("a reply with no listener reported success")
	}
	if _, err := e.pool.Exec(ctx, e.ctlSQL(`UPDATE {schema}.control_payloads SET created_at = now() - interval '2 minutes'`)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Broadcast(ctx, "ns", big); err != nil {
		t.Fatal(err)
	}
	<-w.C()
	if n := count(); n != 1 {
		t.Fatalf("%d stored payloads after pruning, want 1 (the last)", n)
	}
}

// TestControlReceiverCount checks the counts: every live subscription,
// never a closed one, and per namespace.
func TestControlReceiverCount(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	other := openTestEngine(t, testURL(t), Options{Namespace: e.Namespace()}) // same schema, another Engine
	ctx := t.Context()
	var subs []broker.Subscription
	for i := range 3 {
		eng := e
		if i == 2 {
			eng = other
		}
		s, err := eng.SubscribeWorker(ctx, "ns", fmt.Sprintf("w%d@h", i))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		subs = append(subs, s)
	}
	if n, err := e.Broadcast(ctx, "ns", []byte("hi")); err != nil || n != 3 {
		t.Fatalf("Broadcast = %d, %v; want 3", n, err)
	}
	if n, err := other.Send(ctx, "ns", "w0@h", []byte("hi")); err != nil || n != 1 {
		t.Fatalf("Send = %d, %v; want 1", n, err)
	}
	if n, err := e.Broadcast(ctx, "ns2", []byte("hi")); err != nil || n != 0 {
		t.Fatalf("Broadcast to another namespace = %d, %v; want 0", n, err)
	}
	_ = subs[1].Close()
	if n, err := e.Broadcast(ctx, "ns", []byte("hi")); err != nil || n != 2 {
		t.Fatalf("Broadcast after a Close = %d, %v; want 2", n, err)
	}
}

// TestControlListenerReconnect kills a subscription's connection on the
// server: the subscription must listen again (Broadcast counts it again)
// and then receive a broadcast.
func TestControlListenerReconnect(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	app := "stemtest-" + randomNamespace()[9:]
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	e := openTestEngine(t, raw+sep+"application_name="+app, Options{})
	ctx := t.Context()
	sub, err := e.SubscribeWorker(ctx, "ns", "w@h")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	cs := sub.(*ctlSub)
	if live, sessions := cs.state(); !live || sessions != 1 {
		t.Fatalf("live %v, sessions %d; want live, 1", live, sessions)
	}
	var killed int
	err = e.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) AS k`, app+"-control").Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d control connections (%v), want 1", killed, err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, sessions := cs.state()
		return sessions >= 2
	}, "the subscription did not reconnect")
	testutil.Eventually(t, 10*time.Second, func() bool {
		n, err := e.Broadcast(ctx, "ns", []byte("probe"))
		return err == nil && n == 1
	}, "the reconnected subscription is not counted")
	if _, err := e.Broadcast(ctx, "ns", []byte("after")); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-sub.C():
			if string(m) == "after" {
				return
			}
		case <-timeout:
			t.Fatal("a broadcast after the reconnection did not arrive")
		}
	}
}

// TestControlMigratesVersion1 opens a schema at version 1: the control
// tables are added.
func TestControlMigratesVersion1(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	for _, stmt := range []string{
		`DROP TABLE {schema}.control_payloads`, `DROP TABLE {schema}.paused_queues`, `DROP TABLE {schema}.revokes`,
		`DELETE FROM {schema}.schema_version WHERE version >= 2`,
	} {
		if _, err := e.pool.Exec(ctx, e.ctlSQL(stmt)); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	again, err := Open(ctx, raw, Options{Namespace: e.Namespace()})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var version int
	if err := again.pool.QueryRow(ctx, e.ctlSQL(`SELECT max(version) FROM {schema}.schema_version`)).Scan(&version); err != nil || version != SchemaVersion || SchemaVersion < 2 {
		t.Fatalf("schema version %d (%v), want %d (>= 2)", version, err, SchemaVersion)
	}
	if err := again.Pause(ctx, []broker.Pause{{Namespace: "ns", Queue: "q", Worker: "alpha"}}); err != nil {
		t.Fatal(err)
	}
}

// TestControlPing measures `stem worker ping` round trips (a fresh
// requester each: subscribe, broadcast, gather) against two workers on
// another Engine; the requester must return as soon as both answered.
func TestControlPing(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	w := openTestEngine(t, testURL(t), Options{Namespace: e.Namespace()})
	const ns = "ctl"
	var wg sync.WaitGroup
	var subs []broker.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Close()
		}
		wg.Wait()
	}()
	for i := range 2 {
		id := fmt.Sprintf("w%d@h", i)
		sub, err := w.SubscribeWorker(t.Context(), ns, id)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
		wg.Go(func() {
			for msg := range sub.C() {
				req, err := control.Decode(msg)
				if err != nil {
					t.Error(err)
					continue
				}
				b, _ := json.Marshal(control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: id})
				if err := w.Reply(context.Background(), ns, req.ReplyTo, b); err != nil {
					t.Error(err)
				}
			}
		})
	}
	var cold, warm []time.Duration
	warmQ := &control.Requester{Transport: e, Namespace: ns}
	defer warmQ.Close()
	for range 15 {
		q := &control.Requester{Transport: e, Namespace: ns}
		res, err := q.Do(t.Context(), control.TypePing, nil, nil, 5*time.Second)
		_ = q.Close()
		if err != nil || res.Expected != 2 || len(res.Replies) != 2 {
			t.Fatalf("ping: expected %d, %d replies, %v", res.Expected, len(res.Replies), err)
		}
		cold = append(cold, res.Elapsed)
		res, err = warmQ.Do(t.Context(), control.TypePing, nil, nil, 5*time.Second)
		if err != nil || res.Expected != 2 || len(res.Replies) != 2 {
			t.Fatalf("ping: expected %d, %d replies, %v", res.Expected, len(res.Replies), err)
		}
		warm = append(warm, res.Elapsed)
	}
	for _, m := range []struct {
		what string
		d    []time.Duration
	}{{"fresh requester (connect, listen, broadcast, gather)", cold}, {"requester already listening", warm}} {
		slices.Sort(m.d)
		t.Logf("ping of 2 workers, %s: min %v, p50 %v, max %v", m.what, m.d[0], m.d[len(m.d)/2], m.d[len(m.d)-1])
		if m.d[len(m.d)-1] > time.Second {
			t.Errorf("a ping took %v: the requester waited for its timeout", m.d[len(m.d)-1])
		}
	}
}

// TestControlPaused checks the pause store rejects bad input and keeps
// queue names byte-ordered.
func TestControlPaused(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	var ps []broker.Pause
	for _, q := range []string{"b", "B", "a-b", "ab"} {
		ps = append(ps, broker.Pause{Namespace: "ns", Queue: q})
	}
	if err := e.Pause(ctx, ps); err != nil {
		t.Fatal(err)
	}
	got, err := e.Pauses(ctx, "ns")
	var qs []string
	for _, p := range got {
		qs = append(qs, p.Queue)
	}
	if err != nil || fmt.Sprint(qs) != "[B a-b ab b]" {
		t.Fatalf("Pauses = %v, %v", qs, err)
	}
	if err := e.Pause(ctx, []broker.Pause{{Namespace: "ns"}}); err == nil {
		t.Fatal("an empty queue name was accepted")
	}
	if _, err := e.Pauses(ctx, ""); err == nil {
		t.Fatal("an empty namespace was accepted")
	}
}

// TestPausesMigrateFromVersion2: a pause stored by the previous release
// (schema version 2: no scope, no signature) survives the upgrade as a
// namespace-wide, unsigned pause at the same time.
func TestPausesMigrateFromVersion2(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	at := time.Date(2026, 11, 30, 3, 0, 0, 123_000_000, time.UTC)
	for _, stmt := range []string{
		`DROP TABLE {schema}.paused_queues`,
		`CREATE TABLE {schema}.paused_queues (namespace text NOT NULL, queue text NOT NULL, paused_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace, queue))`,
		`INSERT INTO {schema}.paused_queues VALUES ('ctl', 'reports', '2026-11-30 03:00:00.123+00')`,
		`DROP TABLE {schema}.revokes`,
		`DELETE FROM {schema}.schema_version WHERE version >= 3`,
	} {
		if _, err := e.pool.Exec(ctx, e.ctlSQL(stmt)); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	again, err := Open(ctx, raw, Options{Namespace: e.Namespace()})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	ps, err := again.Pauses(ctx, "ctl")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Queue != "reports" || ps[0].Worker != "" || ps[0].Sig != "" || !ps[0].PausedAt.Equal(at) {
		t.Fatalf("pauses after the upgrade = %+v; want one namespace-wide unsigned pause of reports at %v", ps, at)
	}
}
