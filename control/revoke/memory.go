package revoke

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is an in-process Store, for tests and single-process embedding.
// Its records live as long as the process. Open gives every memory:// URL
// one shared set of records per process; NewMemory makes a private one.
type Memory struct {
	state  *memoryState
	closed atomic.Bool
}

// memoryState holds the records; several Memory handles may share one.
type memoryState struct {
	mu      sync.Mutex
	records map[string]map[string]Entry // namespace -> task id -> entry
}

// NewMemory returns an empty in-process store.
func NewMemory() *Memory {
	return &Memory{state: &memoryState{records: map[string]map[string]Entry{}}}
}

var (
	sharedMu     sync.Mutex
	sharedStates = map[string]*memoryState{}
)

// SharedMemory returns a new handle on the process-wide records of a
// memory:// URL: every handle opened with the same URL sees the same
// records, and closing one handle does not affect the others.
func SharedMemory(rawURL string) *Memory {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	st, ok := sharedStates[rawURL]
	if !ok {
		st = &memoryState{records: map[string]map[string]Entry{}}
		sharedStates[rawURL] = st
	}
	return &Memory{state: st}
}

// Upsert implements Store.
func (m *Memory) Upsert(ctx context.Context, entries []Entry) ([]Entry, error) {
	if err := CheckUpsert(ctx, m.closed.Load(), entries); err != nil {
		return nil, err
	}
	st := m.state
	st.mu.Lock()
	defer st.mu.Unlock()
	latest := make(map[Key]Entry, len(entries))
	for _, e := range entries {
		ns := st.records[e.Namespace]
		if ns == nil {
			ns = map[string]Entry{}
			st.records[e.Namespace] = ns
		}
		if cur, ok := ns[e.TaskID]; !ok || e.Version > cur.Version {
			ns[e.TaskID] = e
		}
		latest[KeyOf(e)] = ns[e.TaskID]
	}
	return ResultsFor(entries, latest), nil
}

// List implements Store.
func (m *Memory) List(ctx context.Context, namespace string) ([]Entry, error) {
	if err := CheckCall(ctx, m.closed.Load()); err != nil {
		return nil, err
	}
	if err := CheckNamespace("list", namespace); err != nil {
		return nil, err
	}
	st := m.state
	st.mu.Lock()
	out := make([]Entry, 0, len(st.records[namespace]))
	for _, e := range st.records[namespace] {
		out = append(out, e)
	}
	st.mu.Unlock()
	SortEntries(out)
	return out, nil
}

// Prune implements Store.
func (m *Memory) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := CheckCall(ctx, m.closed.Load()); err != nil {
		return 0, err
	}
	if err := CheckNamespace("prune", namespace); err != nil {
		return 0, err
	}
	st := m.state
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for id, e := range st.records[namespace] {
		if e.Expired(now) {
			delete(st.records[namespace], id)
			n++
		}
	}
	if len(st.records[namespace]) == 0 {
		delete(st.records, namespace)
	}
	return n, nil
}

// Trim implements Store.
func (m *Memory) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := CheckTrim(ctx, m.closed.Load(), namespace, keep); err != nil {
		return 0, err
	}
	st := m.state
	st.mu.Lock()
	defer st.mu.Unlock()
	all := make([]Entry, 0, len(st.records[namespace]))
	for _, e := range st.records[namespace] {
		all = append(all, e)
	}
	victims := TrimVictims(all, keep)
	for _, e := range victims {
		delete(st.records[namespace], e.TaskID)
	}
	return len(victims), nil
}

// Close marks this handle closed; later calls return ErrClosed. The
// records of a shared memory:// store stay for the other handles. Closing
// twice is safe.
func (m *Memory) Close() error {
	m.closed.Store(true)
	return nil
}
