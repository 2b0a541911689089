// Package testutil holds helpers shared by stem's tests: bounded waiting
// (instead of sleeping) and the rule that integration tests may skip on a
// laptop but never under CI.
package testutil

import (
	"os"
	"testing"
	"time"
)

// Eventually polls cond every millisecond until it returns true, and fails
// the test with msg if within passes first. It is a bounded wait on a
// condition, not a sleep.
func Eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("after %s: "+msg, append([]any{within}, args...)...)
	}
}

// Poll reports whether cond became true within the duration.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
}

// EnvOrSkip returns the value of an integration-test variable such as
// STEM_TEST_REDIS_URL. When it is unset the test is skipped, except under CI
// (CI set), where it fails: CI must never silently skip a backend.
func EnvOrSkip(t testing.TB, key string) string {
	t.Helper()
	v := os.Getenv(key)
	if v != "" {
		return v
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not set, and integration tests may not skip under CI", key)
	}
	t.Skipf("%s not set; skipping integration test", key)
	return ""
}
