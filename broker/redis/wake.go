package redis

import (
	"context"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// notifier owns the Engine's one pub/sub subscription to queue wake
// channels and fans its messages out to waiting claims. The subscription is
// started by the first waiting claim and grows to every channel a claim has
// waited on; it is never shrunk, because a worker waits on the same few
// queues for its whole life. No *goredis.PubSub leaves this type.
//
// go-redis keeps the subscription alive: it pings it, reconnects and
// resubscribes. Each (re)subscription confirmation wakes the channel's
// waiters too, so a claim retries after any gap in which a wake-up might
// have been missed.
type notifier struct {
	client *goredis.Client

	mu        sync.Mutex
	closed    bool
	ps        *goredis.PubSub
	loopDone  chan struct{}
	requested map[string]bool // channels subscribed to (or being)
	confirmed map[string]bool // channels whose subscription Redis confirmed
	waiters   map[string]map[*waiter]struct{}
}

// waiter is one waiting claim. Its channel holds at most one pending
// wake-up; more are redundant.
type waiter struct {
	channels []string
	ch       chan struct{}
}

func newNotifier(client *goredis.Client) *notifier {
	return &notifier{
		client:    client,
		requested: map[string]bool{},
		confirmed: map[string]bool{},
		waiters:   map[string]map[*waiter]struct{}{},
	}
}

// register adds a waiter for channels, subscribing to those not yet
// subscribed. It returns nil after close.
func (n *notifier) register(ctx context.Context, channels []string) *waiter {
	w := &waiter{channels: channels, ch: make(chan struct{}, 1)}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	var fresh []string
	for _, c := range channels {
		set := n.waiters[c]
		if set == nil {
			set = map[*waiter]struct{}{}
			n.waiters[c] = set
		}
		set[w] = struct{}{}
		if !n.requested[c] {
			n.requested[c] = true
			fresh = append(fresh, c)
		}
	}
	start := false
	if n.ps == nil {
		// Without channels, Subscribe does no I/O: the connection is
		// dialled by the receive loop or by the Subscribe below, outside
		// n.mu, so a slow dial never blocks the fan-out.
		n.ps = n.client.Subscribe(context.Background())
		n.loopDone = make(chan struct{})
		start = true
	}
	ps := n.ps
	n.mu.Unlock()

	if start {
		go n.loop(ps.ChannelWithSubscriptions(goredis.WithChannelSize(256)))
	}
	if len(fresh) > 0 {
		// An error leaves the channels recorded in the PubSub, which
		// subscribes them when it (re)connects; until Redis confirms,
		// waiters poll (see unconfirmedPoll).
		_ = ps.Subscribe(ctx, fresh...)
	}
	return w
}

// unregister removes a waiter.
func (n *notifier) unregister(w *waiter) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range w.channels {
		delete(n.waiters[c], w)
	}
}

// allConfirmed reports whether Redis has confirmed the subscription to
// every channel of w, so that wake-ups on them will arrive.
func (n *notifier) allConfirmed(w *waiter) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range w.channels {
		if !n.confirmed[c] {
			return false
		}
	}
	return true
}

// loop delivers subscription confirmations and messages to waiters until
// the PubSub is closed, which closes msgs.
func (n *notifier) loop(msgs <-chan any) {
	defer close(n.loopDone)
	for msg := range msgs {
		var channel string
		switch m := msg.(type) {
		case *goredis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			channel = m.Channel
		case *goredis.Message:
			channel = m.Channel
		default:
			continue
		}
		n.mu.Lock()
		if _, isSub := msg.(*goredis.Subscription); isSub {
			n.confirmed[channel] = true
		}
		for w := range n.waiters[channel] {
			select {
			case w.ch <- struct{}{}:
			default:
			}
		}
		n.mu.Unlock()
	}
}

// close ends the subscription and waits for the fan-out loop to finish.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	ps, done := n.ps, n.loopDone
	n.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
		<-done
	}
}

// subscribedTo reports whether Redis confirmed the subscription to channel.
func (n *notifier) subscribedTo(channel string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.confirmed[channel]
}
