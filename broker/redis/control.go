package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stemhq/stem/broker"
)

// The Engine is also the control transport and pause store of a Redis
// deployment. Broadcast is true fan-out: every worker subscribes to its
// namespace's broadcast channel, and PUBLISH returns how many received the
// message, so a requester knows how many replies to wait for.
var (
	_ broker.ControlTransport = (*Engine)(nil)
	_ broker.PauseStore       = (*Engine)(nil)
)

// subscription adapts a *goredis.PubSub to broker.Subscription; the
// go-redis type never leaves this package.
type subscription struct {
	ps   *goredis.PubSub
	ch   chan []byte
	once sync.Once
	done chan struct{}
}

func (s *subscription) C() <-chan []byte { return s.ch }

func (s *subscription) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.ps.Close()
	})
	return err
}

// subscribe subscribes to channels and returns once Redis confirmed the
// subscription (so nothing published afterwards is missed).
func (e *Engine) subscribe(ctx context.Context, channels ...string) (broker.Subscription, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	ps := e.client.Subscribe(ctx, channels...)
	for range channels {
		if _, err := ps.Receive(ctx); err != nil {
			_ = ps.Close()
			return nil, e.fail("subscribe", err)
		}
	}
	s := &subscription{ps: ps, ch: make(chan []byte, 64), done: make(chan struct{})}
	in := ps.Channel(goredis.WithChannelSize(256))
	go func() {
		defer close(s.ch)
		for {
			select {
			case <-s.done:
				return
			case <-e.done: // the engine closed: so does the subscription
				_ = s.Close()
				return
			case m, ok := <-in:
				if !ok {
					return
				}
				select {
				case s.ch <- []byte(m.Payload):
				case <-s.done:
					return
				}
			}
		}
	}()
	return s, nil
}

// SubscribeWorker implements broker.ControlTransport.
func (e *Engine) SubscribeWorker(ctx context.Context, namespace, workerID string) (broker.Subscription, error) {
	return e.subscribe(ctx, e.keys.ctlBroadcast(namespace), e.keys.ctlWorker(namespace, workerID))
}

// ListenReplies implements broker.ControlTransport.
func (e *Engine) ListenReplies(ctx context.Context, namespace, replyTo string) (broker.Subscription, error) {
	return e.subscribe(ctx, e.keys.ctlReply(namespace, replyTo))
}

func (e *Engine) publishCtl(ctx context.Context, op, channel string, msg []byte) (int, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	n, err := e.client.Publish(ctx, channel, msg).Result()
	if err != nil {
		return 0, e.fail(op, err)
	}
	return int(n), nil
}

// Broadcast implements broker.ControlTransport.
func (e *Engine) Broadcast(ctx context.Context, namespace string, msg []byte) (int, error) {
	return e.publishCtl(ctx, "control broadcast", e.keys.ctlBroadcast(namespace), msg)
}

// Send implements broker.ControlTransport.
func (e *Engine) Send(ctx context.Context, namespace, workerID string, msg []byte) (int, error) {
	return e.publishCtl(ctx, "control send", e.keys.ctlWorker(namespace, workerID), msg)
}

// Reply implements broker.ControlTransport. A reply nobody receives (the
// requester gave up) is an error the worker logs at debug level.
func (e *Engine) Reply(ctx context.Context, namespace, replyTo string, msg []byte) error {
	n, err := e.publishCtl(ctx, "control reply", e.keys.ctlReply(namespace, replyTo), msg)
	if err == nil && n == 0 {
		return fmt.Errorf("nobody listens on reply channel %s (the requester gave up)", replyTo)
	}
	return err
}

// Pause implements broker.PauseStore: one HSET of every pause.
func (e *Engine) Pause(ctx context.Context, pauses []broker.Pause) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if err := broker.ValidatePauses(pauses); err != nil {
		return fmt.Errorf("redis engine: %w", err)
	}
	byNS := map[string][]any{}
	for _, p := range pauses {
		p.PausedAt = p.PausedAt.UTC()
		b, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("redis engine: pause %q: %w", p.Queue, err)
		}
		byNS[p.Namespace] = append(byNS[p.Namespace], pauseField(p.Worker, p.Queue), string(b))
	}
	pipe := e.client.TxPipeline()
	for ns, fv := range byNS {
		pipe.HSet(ctx, e.keys.pauses(ns), fv...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return e.fail("pause queues", err)
	}
	return nil
}

// Resume implements broker.PauseStore: HDEL of the scope's fields (and,
// for the namespace-wide scope, SREM from the SET older versions wrote).
func (e *Engine) Resume(ctx context.Context, namespace, worker string, queues []string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(queues) == 0 {
		return nil
	}
	fields := make([]string, len(queues))
	members := make([]any, len(queues))
	for i, q := range queues {
		fields[i], members[i] = pauseField(worker, q), q
	}
	pipe := e.client.TxPipeline()
	pipe.HDel(ctx, e.keys.pauses(namespace), fields...)
	if worker == "" {
		pipe.SRem(ctx, e.keys.paused(namespace), members...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return e.fail("resume queues", err)
	}
	return nil
}

// Pauses implements broker.PauseStore: HGETALL, plus the members of the
// SET older versions wrote (namespace-wide, unsigned). A value that does
// not decode is skipped.
func (e *Engine) Pauses(ctx context.Context, namespace string) ([]broker.Pause, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	pipe := e.client.Pipeline()
	h := pipe.HGetAll(ctx, e.keys.pauses(namespace))
	legacy := pipe.SMembers(ctx, e.keys.paused(namespace))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, e.fail("read paused queues", err)
	}
	out := []broker.Pause{}
	seen := map[string]bool{}
	for _, v := range h.Val() {
		var p broker.Pause
		if json.Unmarshal([]byte(v), &p) != nil || p.Queue == "" {
			continue
		}
		p.Namespace = namespace
		seen[pauseField(p.Worker, p.Queue)] = true
		out = append(out, p)
	}
	for _, q := range legacy.Val() {
		if !seen[pauseField("", q)] {
			out = append(out, broker.Pause{Namespace: namespace, Queue: q})
		}
	}
	broker.SortPauses(out)
	return out, nil
}
