//go:build race

package sqlite

// raceEnabled reports whether the race detector is on: it slows the
// machine too much for latency targets to mean anything.
const raceEnabled = true
