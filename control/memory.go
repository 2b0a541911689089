package control

import (
	"context"
	"errors"
	"sync"
)

// Memory is an in-process Transport and PauseStore: every engine opened
// with a memory:// URL in one process shares one. It exists for tests and
// single-process embedding.
type Memory struct {
	mu     sync.Mutex
	topics map[string]map[*memSub]struct{}
	paused map[string]map[pauseKey]Pause
}

type pauseKey struct{ worker, queue string }

// NewMemory returns an empty in-process transport.
func NewMemory() *Memory {
	return &Memory{topics: map[string]map[*memSub]struct{}{}, paused: map[string]map[pauseKey]Pause{}}
}

var _ Transport = (*Memory)(nil)
var _ PauseStore = (*Memory)(nil)

type memSub struct {
	m      *Memory
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

func (m *Memory) subscribe(topics ...string) *memSub {
	s := &memSub{m: m, topics: topics, ch: make(chan []byte, 256), done: make(chan struct{})}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range topics {
		if m.topics[t] == nil {
			m.topics[t] = map[*memSub]struct{}{}
		}
		m.topics[t][s] = struct{}{}
	}
	return s
}

// publish delivers msg to the topic's subscribers; a subscriber whose
// buffer is full misses it (like a slow pub/sub client would).
func (m *Memory) publish(topic string, msg []byte) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for s := range m.topics[topic] {
		select {
		case s.ch <- append([]byte(nil), msg...):
			n++
		default:
		}
	}
	return n
}

func broadcastTopic(ns string) string      { return ns + "|all" }
func workerTopic(ns, id string) string     { return ns + "|w|" + id }
func replyTopic(ns, replyTo string) string { return ns + "|r|" + replyTo }

// SubscribeWorker implements Transport.
func (m *Memory) SubscribeWorker(_ context.Context, ns, id string) (Subscription, error) {
	return m.subscribe(broadcastTopic(ns), workerTopic(ns, id)), nil
}

// Broadcast implements Transport.
func (m *Memory) Broadcast(_ context.Context, ns string, msg []byte) (int, error) {
	return m.publish(broadcastTopic(ns), msg), nil
}

// Send implements Transport.
func (m *Memory) Send(_ context.Context, ns, id string, msg []byte) (int, error) {
	return m.publish(workerTopic(ns, id), msg), nil
}

// ListenReplies implements Transport.
func (m *Memory) ListenReplies(_ context.Context, ns, replyTo string) (Subscription, error) {
	return m.subscribe(replyTopic(ns, replyTo)), nil
}

// Reply implements Transport.
func (m *Memory) Reply(_ context.Context, ns, replyTo string, msg []byte) error {
	if m.publish(replyTopic(ns, replyTo), msg) == 0 {
		return errors.New("nobody listens on the reply channel (the requester gave up)")
	}
	return nil
}

// Pause implements PauseStore.
func (m *Memory) Pause(_ context.Context, pauses []Pause) error {
	if err := ValidatePauses(pauses); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range pauses {
		if m.paused[p.Namespace] == nil {
			m.paused[p.Namespace] = map[pauseKey]Pause{}
		}
		m.paused[p.Namespace][pauseKey{p.Worker, p.Queue}] = p
	}
	return nil
}

// Resume implements PauseStore.
func (m *Memory) Resume(_ context.Context, ns, worker string, queues []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, q := range queues {
		delete(m.paused[ns], pauseKey{worker, q})
	}
	return nil
}

// Pauses implements PauseStore.
func (m *Memory) Pauses(_ context.Context, ns string) ([]Pause, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Pause, 0, len(m.paused[ns]))
	for _, p := range m.paused[ns] {
		out = append(out, p)
	}
	SortPauses(out)
	return out, nil
}
