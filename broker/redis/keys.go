package redis

// Every Redis key and pub/sub channel name the engine uses is built here, so
// the layout is documented and changed in one place (docs/redis-keys.md
// describes it in full).
//
// A queue's keys share the hash tag {<ns>:<queue>}, so they live in one
// cluster slot and a per-queue script touches a single slot. Queue names
// cannot contain braces (broker.Envelope.Validate rejects them), and the
// namespace cannot either (Options.Validate), so a tag is never ambiguous.

// keys builds key names under one namespace (the key prefix).
type keys struct {
	ns string
}

// queueTag is the hash tag shared by a queue's keys: "{<ns>:<queue>}".
func (k keys) queueTag(queue string) string {
	return "{" + k.ns + ":" + queue + "}"
}

// ready is the LIST of envelope JSON ready to be claimed, head first.
func (k keys) ready(queue string) string { return k.queueTag(queue) + ":ready" }

// delayed is the ZSET of "<tag>|<envelope JSON>" members scored by the ms
// at which they become ready (ETA or retry time).
func (k keys) delayed(queue string) string { return k.queueTag(queue) + ":delayed" }

// leased is the ZSET of delivery tokens ("<tag>|<envelope JSON>") scored by
// their lease deadline in ms.
func (k keys) leased(queue string) string { return k.queueTag(queue) + ":leased" }

// epoch is the STRING naming the queue's current data epoch: a random
// value the scripts create when it is missing. Every delivery token starts
// with the epoch of its claim, so a token whose epoch differs from the
// queue's current one proves the server lost the queue's data (a restart
// without persistence, a flush) rather than that another worker took the
// lease; see extendScript.
func (k keys) epoch(queue string) string { return k.queueTag(queue) + ":epoch" }

// settled is the SET of the SHA-1 digests of older-epoch tokens restored
// or handed back since the queue's current epoch began: each is restored
// or applied once only (see extendScript). It is lost with the data, and
// so starts empty with each new epoch; it holds at most the deliveries
// workers held when the data was lost.
func (k keys) settled(queue string) string { return k.queueTag(queue) + ":settled" }

// dead is the LIST of dead-letter entry JSON, newest first, capped.
func (k keys) dead(queue string) string { return k.queueTag(queue) + ":dead" }

// wake is the pub/sub channel on which publishes to a queue announce work,
// so waiting claims retry at once.
func (k keys) wake(queue string) string { return k.queueTag(queue) + ":wake" }

// result is the STRING holding one task's state: "<attempt>,<rank>|<JSON>".
func (k keys) result(taskID string) string { return k.ns + ":result:" + taskID }

// workersTag is the hash tag shared by one registry namespace's keys.
func (k keys) workersTag(namespace string) string {
	return "{" + k.ns + ":workers:" + namespace + "}"
}

// workerIndex is the ZSET of worker ids of a registry namespace, scored by
// the ms of their last heartbeat.
func (k keys) workerIndex(namespace string) string { return k.workersTag(namespace) + ":index" }

// worker is the STRING holding one worker's heartbeat JSON, with the
// heartbeat's TTL.
func (k keys) worker(namespace, id string) string {
	return k.workersTag(namespace) + ":worker:" + id
}

// Control plane: pub/sub channels (not keys: a control request leaves
// nothing behind) and one HASH per control namespace of pauses.

// ctlBroadcast is the channel every worker of a control namespace
// subscribes to.
func (k keys) ctlBroadcast(namespace string) string { return k.ns + ":ctl:" + namespace + ":all" }

// ctlWorker is the channel of one worker.
func (k keys) ctlWorker(namespace, id string) string {
	return k.ns + ":ctl:" + namespace + ":w:" + id
}

// ctlReply is the reply channel of one request.
func (k keys) ctlReply(namespace, replyTo string) string {
	return k.ns + ":ctl:" + namespace + ":r:" + replyTo
}

// paused is the SET of paused queue names of a control namespace, as
// stem wrote it before pauses had a worker scope: still read (each member
// a namespace-wide, unsigned pause) and cleared by a namespace-wide
// resume, never written.
func (k keys) paused(namespace string) string { return k.ns + ":paused:" + namespace }

// pauses is the HASH of a control namespace's pauses: field
// "<worker scope>\n<queue>" (the scope empty for every worker), value the
// broker.Pause as JSON.
func (k keys) pauses(namespace string) string { return k.ns + ":pauses:" + namespace }

// pauseField is the field of one pause in the pauses HASH.
func pauseField(worker, queue string) string { return worker + "\n" + queue }

// Revoke store (revoke.go): one HASH per revoke namespace and its expiry
// index. A revoke namespace's keys share the hash tag {<namespace>}, so
// the scripts, which take both, touch one cluster slot.

// revokes is the HASH of a namespace's revokes: field = task id, value =
// "<version>|<Entry JSON>", the version in decimal so that scripts compare
// versions as strings, exactly (Lua numbers are doubles and cannot hold
// every int64).
func (k keys) revokes(namespace string) string { return k.ns + ":{" + namespace + "}:revokes" }

// revokeExpiry is the ZSET of the namespace's task ids that have an
// ExpiresAt, scored by it in microseconds since the epoch (rounded down),
// so Prune finds its candidates without reading every revoke.
func (k keys) revokeExpiry(namespace string) string { return k.revokes(namespace) + ":expiry" }
