package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/registry"
)

// Requester sends control requests and gathers replies (the CLI side).
// It keeps one reply subscription open from its first request until Close,
// so a program that sends many requests pays for subscribing once; Do calls
// are serialised. Replies are matched to their request by id, so a late
// reply to an earlier request is ignored.
type Requester struct {
	Transport broker.ControlTransport
	// Registry lists live workers: it names who did not answer and
	// resolves node names to worker ids. Optional.
	Registry  registry.Registry
	Namespace string
	// SigningKey, when set, signs every request (HMAC-SHA256) and makes
	// the requester ignore replies not signed with it (Result.Forged).
	SigningKey []byte
	Now        func() time.Time

	mu      sync.Mutex
	sub     broker.Subscription
	replyTo string
}

// Close releases the reply subscription. Closing twice, or a Requester
// that never sent, is safe.
func (q *Requester) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sub == nil {
		return nil
	}
	err := q.sub.Close()
	q.sub = nil
	return err
}

// Result is what a request gathered.
type Result struct {
	RequestID string
	// Replies, sorted by worker id.
	Replies []Reply
	// Expected is how many replies the requester waited for.
	Expected int
	// Missing are workers expected to answer that did not (by the
	// timeout): live in the registry, or targeted, but silent.
	Missing []string
	// Unknown are --worker targets that match no live worker.
	Unknown []string
	// Elapsed is how long the request took.
	Elapsed time.Duration
	// RTT is, per worker, the time from publishing to receiving its reply.
	RTT map[string]time.Duration
	// Forged are the workers named by replies the requester ignored
	// because, with a SigningKey, their signature was missing or invalid:
	// forged, or from a worker with another key or too old to sign
	// (message format v1). Such a worker is also Missing unless a valid
	// reply of it arrived.
	Forged []string
}

// Errors returns the replies that carry an error.
func (r Result) Errors() []Reply {
	var out []Reply
	for _, rep := range r.Replies {
		if rep.Error != "" {
			out = append(out, rep)
		}
	}
	return out
}

// ParseTargets splits repeatable, comma-separated --worker values.
func ParseTargets(values []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t != "" && !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// resolve maps targets (node names or full ids) to worker ids using the
// live workers; targets that match none are returned as unknown. A full
// id ("alpha@host") that is not live is still targeted (the registry may
// lag), and also reported unknown if nobody answers.
func resolve(targets []string, live []registry.WorkerInfo) (ids, unknown []string) {
	seen := map[string]bool{}
	for _, t := range targets {
		matched := false
		for _, w := range live {
			if w.ID == t || (!strings.Contains(t, "@") && w.Node == t) {
				matched = true
				if !seen[w.ID] {
					seen[w.ID] = true
					ids = append(ids, w.ID)
				}
			}
		}
		if !matched {
			unknown = append(unknown, t)
			if strings.Contains(t, "@") && !seen[t] {
				seen[t] = true
				ids = append(ids, t)
			}
		}
	}
	return ids, unknown
}

// Do sends a request of type typ with args to targets (all live workers
// when targets is empty) and gathers replies until every expected worker
// answered or timeout passes. It listens for replies before it publishes,
// and leaves nothing behind (the reply subscription is closed).
func (q *Requester) Do(ctx context.Context, typ string, args any, targets []string, timeout time.Duration) (Result, error) {
	now := time.Now
	if q.Now != nil {
		now = q.Now
	}
	start := time.Now()
	res := Result{RequestID: uuid.NewString()}
	var live []registry.WorkerInfo
	if q.Registry != nil {
		var err error
		if live, err = q.Registry.List(ctx, q.Namespace); err != nil {
			return res, fmt.Errorf("list live workers: %w", err)
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sub == nil {
		// Listen before publishing: the subscription is live on return.
		q.replyTo = uuid.NewString()
		sub, err := q.Transport.ListenReplies(ctx, q.Namespace, q.replyTo)
		if err != nil {
			return res, fmt.Errorf("listen for replies: %w", err)
		}
		q.sub = sub
	}
	sub := q.sub
	req := Request{V: Version, Type: typ, ID: res.RequestID, ReplyTo: q.replyTo, Namespace: q.Namespace, SentAt: now().UTC()}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return res, err
		}
		req.Args = b
	}
	// encode signs (for target, "" for a broadcast: the signature binds the
	// request to its recipient) and marshals the request.
	encode := func(target string) ([]byte, error) {
		r := req
		r.Target = target
		if len(q.SigningKey) > 0 {
			if err := r.Sign(q.SigningKey); err != nil {
				return nil, err
			}
		}
		return json.Marshal(r)
	}
	expectedIDs := map[string]bool{}
	published := time.Now()
	if len(targets) == 0 {
		msg, err := encode("")
		if err != nil {
			return res, err
		}
		n, err := q.Transport.Broadcast(ctx, q.Namespace, msg)
		if err != nil {
			return res, fmt.Errorf("broadcast %s: %w", typ, err)
		}
		for _, w := range live {
			expectedIDs[w.ID] = true
		}
		res.Expected = n
		if n < 0 {
			res.Expected = len(live)
		}
	} else {
		ids, unknown := resolve(targets, live)
		res.Unknown = unknown
		for _, id := range ids {
			msg, err := encode(id)
			if err != nil {
				return res, err
			}
			n, err := q.Transport.Send(ctx, q.Namespace, id, msg)
			if err != nil {
				return res, fmt.Errorf("send %s to %s: %w", typ, id, err)
			}
			if n < 0 {
				n = 1
			}
			res.Expected += min(n, 1)
			if n > 0 {
				expectedIDs[id] = true
			}
		}
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	got, forged := map[string]bool{}, map[string]bool{}
	res.RTT = map[string]time.Duration{}
	for len(res.Replies) < res.Expected {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-timer.C:
			goto done
		case b, ok := <-sub.C():
			if !ok {
				q.sub = nil // the transport closed it; the next Do subscribes again
				goto done
			}
			var rep Reply
			if json.Unmarshal(b, &rep) != nil || rep.RequestID != req.ID || got[rep.Worker] {
				continue
			}
			if len(q.SigningKey) > 0 && (!rep.Verify(q.SigningKey) || (rep.Namespace != "" && rep.Namespace != q.Namespace)) {
				if !forged[rep.Worker] {
					forged[rep.Worker] = true
					res.Forged = append(res.Forged, rep.Worker)
				}
				continue
			}
			got[rep.Worker] = true
			res.RTT[rep.Worker] = time.Since(published)
			res.Replies = append(res.Replies, rep)
		}
	}
done:
	sort.Slice(res.Replies, func(i, j int) bool { return res.Replies[i].Worker < res.Replies[j].Worker })
	for id := range expectedIDs {
		if !got[id] {
			res.Missing = append(res.Missing, id)
		}
	}
	sort.Strings(res.Missing)
	sort.Strings(res.Forged)
	// A full id that was targeted though not live and did not answer
	// stays "unknown"; one that answered is not unknown after all.
	var unknown []string
	for _, u := range res.Unknown {
		if !got[u] {
			unknown = append(unknown, u)
		}
	}
	res.Unknown = unknown
	res.Elapsed = time.Since(start)
	return res, nil
}
