package memory

import (
	"time"

	"github.com/stemhq/stem/broker"
)

// deque is a ring buffer of envelopes: the ready list of a queue. Publish
// pushes at the back, requeue and lease expiry at the front.
type deque struct {
	buf  []broker.Envelope
	head int
	n    int
}

func (d *deque) len() int { return d.n }

func (d *deque) grow() {
	if d.n < len(d.buf) {
		return
	}
	nb := make([]broker.Envelope, max(16, 2*len(d.buf)))
	for i := range d.n {
		nb[i] = d.buf[(d.head+i)%len(d.buf)]
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(e broker.Envelope) {
	d.grow()
	d.buf[(d.head+d.n)%len(d.buf)] = e
	d.n++
}

func (d *deque) pushFront(e broker.Envelope) {
	d.grow()
	d.head = (d.head - 1 + len(d.buf)) % len(d.buf)
	d.buf[d.head] = e
	d.n++
}

func (d *deque) popFront() broker.Envelope {
	e := d.buf[d.head]
	d.buf[d.head] = broker.Envelope{} // release references
	d.head = (d.head + 1) % len(d.buf)
	d.n--
	return e
}

// delayedItem is a task waiting for its ETA (or retry delay).
type delayedItem struct {
	due time.Time
	seq uint64 // keeps publish order among equal ETAs
	env broker.Envelope
}

// delayedHeap orders delayed tasks by due time, then publish order.
type delayedHeap []*delayedItem

func (h delayedHeap) Len() int { return len(h) }
func (h delayedHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h delayedHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayedHeap) Push(x any)   { *h = append(*h, x.(*delayedItem)) }
func (h *delayedHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// leaseHeap orders leases by deadline, then claim order, and tracks each
// lease's index so ack and extension are O(log n).
type leaseHeap []*lease

func (h leaseHeap) Len() int { return len(h) }
func (h leaseHeap) Less(i, j int) bool {
	if !h[i].deadline.Equal(h[j].deadline) {
		return h[i].deadline.Before(h[j].deadline)
	}
	return h[i].seq < h[j].seq
}
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *leaseHeap) Push(x any) {
	l := x.(*lease)
	l.index = len(*h)
	*h = append(*h, l)
}
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	l.index = -1
	*h = old[:len(old)-1]
	return l
}
