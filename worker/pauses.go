package worker

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/stemhq/stem/control"
)

// pauseState is which queues are paused, and why (the last pause-store
// read, as StatsData shows it).
type pauseState struct {
	queues atomic.Pointer[map[string]bool]
	mu     sync.Mutex
	status []control.PauseStatus
}

// PausedQueues returns the paused queues this worker consumes, sorted.
func (w *Worker) PausedQueues() []string {
	out := w.queuesPaused(true)
	slices.Sort(out)
	return out
}

func (w *Worker) setPaused(queues []string, paused bool) {
	old := *w.pauses.queues.Load()
	m := maps.Clone(old)
	for _, q := range queues {
		if paused {
			m[q] = true
		} else {
			delete(m, q)
		}
	}
	w.pauses.queues.Store(&m)
	verb := "resumed"
	if paused {
		verb = "paused"
	}
	w.log.WithField("queues", queues).Info("queues " + verb)
}

// queuePaused reports whether this worker has queue paused now.
func (w *Worker) queuePaused(queue string) bool {
	m := *w.pauses.queues.Load()
	return len(m) > 0 && m[queue]
}

// activeQueues are the consumed queues that are not paused, in priority
// order.
func (w *Worker) activeQueues() []string {
	if len(*w.pauses.queues.Load()) == 0 {
		return w.cfg.Queues
	}
	return w.queuesPaused(false)
}

// queuesPaused returns the consumed queues that are (or are not) paused,
// in priority order.
func (w *Worker) queuesPaused(paused bool) []string {
	m := *w.pauses.queues.Load()
	out := []string{}
	for _, q := range w.cfg.Queues {
		if m[q] == paused {
			out = append(out, q)
		}
	}
	return out
}

func (w *Worker) pauseStatus() []control.PauseStatus {
	c := &w.pauses
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]control.PauseStatus(nil), c.status...)
}
