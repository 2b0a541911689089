package memory

import (
	"context"
	"errors"
	"sync"

	"github.com/stemhq/stem/broker"
)

// controlPlane is the memory engine's in-process control transport and
// pause store (Engine embeds it).
type controlPlane struct {
	mu     sync.Mutex
	closed bool // by Engine.Close: subscriptions ended, sends refused
	topics map[string]map[*memSub]struct{}
	paused map[string]map[pauseKey]broker.Pause
}

type pauseKey struct{ worker, queue string }

// newControlPlane returns an empty in-process transport and pause store.
func newControlPlane() *controlPlane {
	return &controlPlane{topics: map[string]map[*memSub]struct{}{}, paused: map[string]map[pauseKey]broker.Pause{}}
}

type memSub struct {
	m      *controlPlane
	topics []string
	ch     chan []byte
	once   sync.Once
	done   chan struct{}
}

func (s *memSub) C() <-chan []byte { return s.ch }

func (s *memSub) Close() error {
	s.once.Do(func() {
		s.m.mu.Lock()
		for _, t := range s.topics {
			delete(s.m.topics[t], s)
			if len(s.m.topics[t]) == 0 {
				delete(s.m.topics, t)
			}
		}
		s.m.mu.Unlock()
		close(s.done)
		close(s.ch)
	})
	return nil
}

// close ends every subscription and refuses later calls (Engine.Close).
func (m *controlPlane) close() {
	m.mu.Lock()
	m.closed = true
	var subs []*memSub
	for _, t := range m.topics {
		for s := range t {
			subs = append(subs, s)
		}
	}
	m.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
}

func (m *controlPlane) subscribe(topics ...string) (broker.Subscription, error) {
	s := &memSub{m: m, topics: topics, ch: make(chan []byte, 256), done: make(chan struct{})}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, broker.ErrClosed
	}
	for _, t := range topics {
		if m.topics[t] == nil {
			m.topics[t] = map[*memSub]struct{}{}
		}
		m.topics[t][s] = struct{}{}
	}
	return s, nil
}

// publish delivers msg to the topic's subscribers; a subscriber whose
// buffer is full misses it (like a slow pub/sub client would).
func (m *controlPlane) publish(topic string, msg []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, broker.ErrClosed
	}
	n := 0
	for s := range m.topics[topic] {
		select {
		case s.ch <- append([]byte(nil), msg...):
			n++
		default:
		}
	}
	return n, nil
}

func broadcastTopic(ns string) string      { return ns + "|all" }
func workerTopic(ns, id string) string     { return ns + "|w|" + id }
func replyTopic(ns, replyTo string) string { return ns + "|r|" + replyTo }

// SubscribeWorker implements broker.ControlTransport.
func (m *controlPlane) SubscribeWorker(_ context.Context, ns, id string) (broker.Subscription, error) {
	return m.subscribe(broadcastTopic(ns), workerTopic(ns, id))
}

// Broadcast implements broker.ControlTransport.
func (m *controlPlane) Broadcast(_ context.Context, ns string, msg []byte) (int, error) {
	return m.publish(broadcastTopic(ns), msg)
}

// Send implements broker.ControlTransport.
func (m *controlPlane) Send(_ context.Context, ns, id string, msg []byte) (int, error) {
	return m.publish(workerTopic(ns, id), msg)
}

// ListenReplies implements broker.ControlTransport.
func (m *controlPlane) ListenReplies(_ context.Context, ns, replyTo string) (broker.Subscription, error) {
	return m.subscribe(replyTopic(ns, replyTo))
}

// Reply implements broker.ControlTransport.
func (m *controlPlane) Reply(_ context.Context, ns, replyTo string, msg []byte) error {
	n, err := m.publish(replyTopic(ns, replyTo), msg)
	if err == nil && n == 0 {
		err = errors.New("nobody listens on the reply channel (the requester gave up)")
	}
	return err
}

// broker.Pause implements broker.PauseStore.
func (m *controlPlane) Pause(_ context.Context, pauses []broker.Pause) error {
	if err := broker.ValidatePauses(pauses); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range pauses {
		if m.paused[p.Namespace] == nil {
			m.paused[p.Namespace] = map[pauseKey]broker.Pause{}
		}
		m.paused[p.Namespace][pauseKey{p.Worker, p.Queue}] = p
	}
	return nil
}

// Resume implements broker.PauseStore.
func (m *controlPlane) Resume(_ context.Context, ns, worker string, queues []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, q := range queues {
		delete(m.paused[ns], pauseKey{worker, q})
	}
	return nil
}

// Pauses implements broker.PauseStore.
func (m *controlPlane) Pauses(_ context.Context, ns string) ([]broker.Pause, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]broker.Pause, 0, len(m.paused[ns]))
	for _, p := range m.paused[ns] {
		out = append(out, p)
	}
	broker.SortPauses(out)
	return out, nil
}
