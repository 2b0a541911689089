package redis

import (
	"context"
	"fmt"
	"sort"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/control"
)

// The Engine is also the control transport and pause store of a Redis
// deployment. Broadcast is true fan-out: every worker subscribes to its
// namespace's broadcast channel, and PUBLISH returns how many received the
// message, so a requester knows how many replies to wait for.
var (
	_ control.Transport  = (*Engine)(nil)
	_ control.PauseStore = (*Engine)(nil)
)

// subscription adapts a *goredis.PubSub to control.Subscription; the
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
func (e *Engine) subscribe(ctx context.Context, channels ...string) (control.Subscription, error) {
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

// SubscribeWorker implements control.Transport.
func (e *Engine) SubscribeWorker(ctx context.Context, namespace, workerID string) (control.Subscription, error) {
	return e.subscribe(ctx, e.keys.ctlBroadcast(namespace), e.keys.ctlWorker(namespace, workerID))
}

// ListenReplies implements control.Transport.
func (e *Engine) ListenReplies(ctx context.Context, namespace, replyTo string) (control.Subscription, error) {
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

// Broadcast implements control.Transport.
func (e *Engine) Broadcast(ctx context.Context, namespace string, msg []byte) (int, error) {
	return e.publishCtl(ctx, "control broadcast", e.keys.ctlBroadcast(namespace), msg)
}

// Send implements control.Transport.
func (e *Engine) Send(ctx context.Context, namespace, workerID string, msg []byte) (int, error) {
	return e.publishCtl(ctx, "control send", e.keys.ctlWorker(namespace, workerID), msg)
}

// Reply implements control.Transport. A reply nobody receives (the
// requester gave up) is an error the worker logs at debug level.
func (e *Engine) Reply(ctx context.Context, namespace, replyTo string, msg []byte) error {
	n, err := e.publishCtl(ctx, "control reply", e.keys.ctlReply(namespace, replyTo), msg)
	if err == nil && n == 0 {
		return fmt.Errorf("nobody listens on reply channel %s (the requester gave up)", replyTo)
	}
	return err
}

// SetPaused implements control.PauseStore.
func (e *Engine) SetPaused(ctx context.Context, namespace string, queues []string, paused bool) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(queues) == 0 {
		return nil
	}
	members := make([]any, len(queues))
	for i, q := range queues {
		members[i] = q
	}
	var err error
	if paused {
		err = e.client.SAdd(ctx, e.keys.paused(namespace), members...).Err()
	} else {
		err = e.client.SRem(ctx, e.keys.paused(namespace), members...).Err()
	}
	if err != nil {
		return e.fail("set paused queues", err)
	}
	return nil
}

// Paused implements control.PauseStore.
func (e *Engine) Paused(ctx context.Context, namespace string) ([]string, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	qs, err := e.client.SMembers(ctx, e.keys.paused(namespace)).Result()
	if err != nil {
		return nil, e.fail("read paused queues", err)
	}
	sort.Strings(qs)
	return qs, nil
}
