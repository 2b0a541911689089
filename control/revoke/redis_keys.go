package revoke

// Every Redis key the revoke store uses is built here, so the layout is
// documented and changed in one place (docs/revoke-stores.md describes it
// for operators).
//
// A namespace's keys share the hash tag {<ns>}, so they live in one cluster
// slot and the scripts, which take both, touch a single slot. Braces in a
// namespace only shorten the tag (Redis hashes the text between the first
// '{' and the next '}'), and both keys still share it.

// redisKeys builds key names under one key prefix.
type redisKeys struct {
	prefix string
}

// tag is the start of every key of a namespace: "<prefix>:{<ns>}".
func (k redisKeys) tag(namespace string) string {
	return k.prefix + ":{" + namespace + "}"
}

// revokes is the HASH of a namespace's revokes: field = task id, value =
// "<version>|<Entry JSON>", the version in decimal so that scripts compare
// versions as strings, exactly (Lua numbers are doubles and cannot hold
// every int64).
func (k redisKeys) revokes(namespace string) string { return k.tag(namespace) + ":revokes" }

// expiry is the ZSET of the namespace's task ids that have an ExpiresAt,
// scored by it in microseconds since the epoch (rounded down), so Prune
// finds its candidates without reading every revoke.
func (k redisKeys) expiry(namespace string) string { return k.tag(namespace) + ":revokes:expiry" }
