package conformance

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stemhq/stem/control/revoke"
)

// RevokeStore runs the revoke area of the suite (upsert if strictly newer,
// returning the entries as stored; namespaces kept apart; List order;
// per-namespace Prune and Trim; validation; concurrent upserts; Close; the
// round trip of every field) against stores built by newStore, for a
// store that is not part of an Engine. newStore builds a fresh, empty
// store for one test (for a networked store, a fresh key prefix or table).
// It must register its own cleanup (t.Cleanup) that closes the store and
// removes any data it left behind; Close must be safe to call more than
// once, since the Closed test closes the store itself.
func RevokeStore(t *testing.T, newStore func(t *testing.T) revoke.Store) {
	runEach(t, newStore, []named[revoke.Store]{
		{"UpsertNew", testUpsertNew},
		{"UpsertHigherVersionWins", testUpsertHigherWins},
		{"UpsertLowerVersionLoses", testUpsertLowerLoses},
		{"UpsertEqualVersionLoses", testUpsertEqualLoses},
		{"UpsertMixedBatch", testUpsertMixedBatch},
		{"UpsertSameTaskTwiceInBatch", testUpsertDuplicates},
		{"UpsertEmpty", testUpsertEmpty},
		{"UpsertLargeVersions", testLargeVersions},
		{"NamespacesIsolated", testNamespacesIsolated},
		{"ListSorted", testListSorted},
		{"ListUnknownNamespace", testListUnknown},
		{"Prune", testPrune},
		{"PruneNeverExpiring", testPruneNeverExpiring},
		{"PruneThenUpsert", testPruneThenUpsert},
		{"TrimKeepsNewest", testTrimKeepsNewest},
		{"TrimRefusesNonPositiveKeep", testTrimBadKeep},
		{"SignedEntryVerifiesAfterRoundTrip", testSignedRoundTrip},
		{"Validation", testRevokeValidation},
		{"ConcurrentSameTask", testConcurrentSameTask},
		{"ConcurrentDistinctTasks", testConcurrentDistinct},
		{"RoundTrip", testRoundTrip},
		{"RoundTripZeroTimes", testRoundTripZeroTimes},
		{"CanceledContext", testCanceledContext},
		{"Closed", testRevokeClosed},
	})
}

// revokeBase is the time the entries are issued at, with millisecond precision
// (every store keeps at least that).
var revokeBase = time.Date(2025, 11, 23, 10, 30, 15, 123_000_000, time.UTC)

// revokeEntry builds a valid entry.
func revokeEntry(ns, task string, version int64) revoke.Entry {
	return revoke.Entry{
		Namespace:   ns,
		TaskID:      task,
		Version:     version,
		IssuedAt:    revokeBase.Add(time.Duration(version%1_000_000) * time.Millisecond),
		Reason:      fmt.Sprintf("reason v%d", version),
		RequestedBy: "tester",
	}
}

func revokeUpsert(t *testing.T, s revoke.Store, entries ...revoke.Entry) []revoke.Entry {
	t.Helper()
	got, err := s.Upsert(testContext(t), entries)
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	if len(got) != len(entries) {
		t.Fatalf("Upsert returned %d entries for %d inputs", len(got), len(entries))
	}
	return got
}

func revokeList(t *testing.T, s revoke.Store, ns string) []revoke.Entry {
	t.Helper()
	got, err := s.List(testContext(t), ns)
	if err != nil {
		t.Fatalf("List(%q): %v", ns, err)
	}
	return got
}

// SameEntry reports how a differs from b, or "" when they are equal: every
// field compared, times with Equal.
func SameEntry(a, b revoke.Entry) string {
	var diffs []string
	for _, f := range []struct {
		name string
		x, y any
	}{
		{"Namespace", a.Namespace, b.Namespace}, {"TaskID", a.TaskID, b.TaskID}, {"Version", a.Version, b.Version},
		{"IssuedAt", a.IssuedAt.UTC(), b.IssuedAt.UTC()}, {"Terminate", a.Terminate, b.Terminate},
		{"Reason", a.Reason, b.Reason}, {"RequestedBy", a.RequestedBy, b.RequestedBy},
		{"ExpiresAt", a.ExpiresAt.UTC(), b.ExpiresAt.UTC()}, {"Sig", a.Sig, b.Sig},
	} {
		if f.x != f.y { // times in UTC (no monotonic reading): == is Equal
			diffs = append(diffs, fmt.Sprintf("%s %v != %v", f.name, f.x, f.y))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprint(diffs)
}

// expectEntries fails the test unless got equals want, entry by entry.
func expectEntries(t *testing.T, what string, got, want []revoke.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d entries %v, want %d %v", what, len(got), entryIDs(got), len(want), entryIDs(want))
	}
	for i := range got {
		if d := SameEntry(got[i], want[i]); d != "" {
			t.Errorf("%s: entry %d (%s/%s): %s", what, i, want[i].Namespace, want[i].TaskID, d)
		}
	}
}

func entryIDs(es []revoke.Entry) []string {
	return idsOf(es, func(e revoke.Entry) string { return fmt.Sprintf("%s/%s@%d", e.Namespace, e.TaskID, e.Version) })
}

func testUpsertNew(t *testing.T, s revoke.Store) {
	in := []revoke.Entry{revokeEntry("ns", "c", 3), revokeEntry("ns", "a", 1), revokeEntry("ns", "b", 2)}
	expectEntries(t, "Upsert result", revokeUpsert(t, s, in...), in)
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{in[1], in[2], in[0]})
}

func testUpsertHigherWins(t *testing.T, s revoke.Store) {
	revokeUpsert(t, s, revokeEntry("ns", "t", 5))
	newer := revokeEntry("ns", "t", 6)
	newer.Terminate = true
	expectEntries(t, "Upsert result", revokeUpsert(t, s, newer), []revoke.Entry{newer})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{newer})
}

func testUpsertLowerLoses(t *testing.T, s revoke.Store) {
	stored := revokeEntry("ns", "t", 5)
	revokeUpsert(t, s, stored)
	older := revokeEntry("ns", "t", 4)
	older.Reason = "older"
	// The result is the stored entry, not the input (defect 12 of the
	// original returned the inputs).
	expectEntries(t, "Upsert result", revokeUpsert(t, s, older), []revoke.Entry{stored})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{stored})
}

func testUpsertEqualLoses(t *testing.T, s revoke.Store) {
	stored := revokeEntry("ns", "t", 5)
	revokeUpsert(t, s, stored)
	same := stored
	same.Reason = "same version, other reason"
	same.Terminate = true
	expectEntries(t, "Upsert result", revokeUpsert(t, s, same), []revoke.Entry{stored})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{stored})
}

func testUpsertMixedBatch(t *testing.T, s revoke.Store) {
	a5, b5 := revokeEntry("ns", "a", 5), revokeEntry("ns", "b", 5)
	revokeUpsert(t, s, a5, b5)
	a7, b3, c1 := revokeEntry("ns", "a", 7), revokeEntry("ns", "b", 3), revokeEntry("ns", "c", 1)
	expectEntries(t, "Upsert result", revokeUpsert(t, s, a7, b3, c1), []revoke.Entry{a7, b5, c1})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{c1, b5, a7})
}

func testUpsertDuplicates(t *testing.T, s revoke.Store) {
	// Each result is the entry stored once the whole call is applied.
	v3, v5, v4 := revokeEntry("ns", "t", 3), revokeEntry("ns", "t", 5), revokeEntry("ns", "t", 4)
	expectEntries(t, "Upsert result", revokeUpsert(t, s, v3, v5, v4), []revoke.Entry{v5, v5, v5})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{v5})
}

func testUpsertEmpty(t *testing.T, s revoke.Store) {
	got, err := s.Upsert(testContext(t), nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("Upsert(nil) = %v, %v; want no entries, no error", got, err)
	}
	expectEntries(t, "List", revokeList(t, s, "ns"), nil)
}

func testLargeVersions(t *testing.T, s revoke.Store) {
	// Versions are nanosecond timestamps: neighbours differ only in digits
	// a float64 cannot hold, so a store comparing them as doubles fails.
	const v = int64(1763893815123456789)
	revokeUpsert(t, s, revokeEntry("ns", "t", v), revokeEntry("ns", "max", math.MaxInt64-1))
	next := revokeEntry("ns", "t", v+1)
	expectEntries(t, "Upsert v+1", revokeUpsert(t, s, next), []revoke.Entry{next})
	expectEntries(t, "Upsert v (now stale)", revokeUpsert(t, s, revokeEntry("ns", "t", v)), []revoke.Entry{next})
	maxed := revokeEntry("ns", "max", math.MaxInt64)
	expectEntries(t, "Upsert MaxInt64", revokeUpsert(t, s, maxed), []revoke.Entry{maxed})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{next, maxed})
}

func testNamespacesIsolated(t *testing.T, s revoke.Store) {
	one := revokeEntry("ns1", "task", 10)
	two := revokeEntry("ns2", "task", 3) // lower, but a different record
	two.Reason = "ns2's own"
	expectEntries(t, "Upsert ns1", revokeUpsert(t, s, one), []revoke.Entry{one})
	expectEntries(t, "Upsert ns2", revokeUpsert(t, s, two), []revoke.Entry{two})
	expectEntries(t, "List ns1", revokeList(t, s, "ns1"), []revoke.Entry{one})
	expectEntries(t, "List ns2", revokeList(t, s, "ns2"), []revoke.Entry{two})
	// A namespace that is a prefix of another is still another namespace.
	expectEntries(t, "List ns", revokeList(t, s, "ns"), nil)

	past := revokeBase.Add(-time.Hour)
	one.ExpiresAt = past
	one.Version = 11
	revokeUpsert(t, s, one)
	wantCount(t, 0, "Prune(ns2) (the expired entry is in ns1)")(s.Prune(testContext(t), "ns2", revokeBase))
	expectEntries(t, "List ns1 after pruning ns2", revokeList(t, s, "ns1"), []revoke.Entry{one})
}

func testListSorted(t *testing.T, s revoke.Store) {
	// Ties on version break by task id in byte order, whatever the
	// backend's collation ("B" < "a" < "a-b" < "ab" < "b").
	var in []revoke.Entry
	for _, id := range []string{"b", "ab", "a-b", "B", "a"} {
		in = append(in, revokeEntry("ns", id, 7))
	}
	in = append(in, revokeEntry("ns", "z", 1), revokeEntry("ns", "y", 100), revokeEntry("ns", "x", 8))
	rand.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
	revokeUpsert(t, s, in...)
	var got []string
	for _, e := range revokeList(t, s, "ns") {
		got = append(got, fmt.Sprintf("%d/%s", e.Version, e.TaskID))
	}
	want := []string{"1/z", "7/B", "7/a", "7/a-b", "7/ab", "7/b", "8/x", "100/y"}
	if !slices.Equal(got, want) {
		t.Fatalf("List order = %v, want %v", got, want)
	}
}

func testListUnknown(t *testing.T, s revoke.Store) {
	revokeUpsert(t, s, revokeEntry("ns", "t", 1))
	got, err := s.List(testContext(t), "nobody")
	if err != nil || len(got) != 0 {
		t.Fatalf("List(unknown namespace) = %v, %v; want no entries, no error", got, err)
	}
}

func testPrune(t *testing.T, s revoke.Store) {
	now := revokeBase.Add(time.Hour)
	expired := revokeEntry("ns", "expired", 1)
	expired.ExpiresAt = now.Add(-time.Minute)
	atNow := revokeEntry("ns", "at-now", 2)
	atNow.ExpiresAt = now // expired: ExpiresAt is not after now
	future := revokeEntry("ns", "future", 3)
	future.ExpiresAt = now.Add(time.Millisecond)
	forever := revokeEntry("ns", "forever", 4)
	other := revokeEntry("other", "expired", 1)
	other.ExpiresAt = now.Add(-time.Minute)
	revokeUpsert(t, s, expired, atNow, future, forever, other)

	wantCount(t, 2, "Prune")(s.Prune(testContext(t), "ns", now))
	expectEntries(t, "List ns", revokeList(t, s, "ns"), []revoke.Entry{future, forever})
	expectEntries(t, "List other (not pruned)", revokeList(t, s, "other"), []revoke.Entry{other})
	wantCount(t, 0, "second Prune")(s.Prune(testContext(t), "ns", now))
	wantCount(t, 0, "Prune(unknown namespace)")(s.Prune(testContext(t), "nobody", now))
	wantCount(t, 1, "Prune a millisecond later")(s.Prune(testContext(t), "ns", now.Add(time.Millisecond)))
	expectEntries(t, "List ns at the end", revokeList(t, s, "ns"), []revoke.Entry{forever})
}

func testPruneNeverExpiring(t *testing.T, s revoke.Store) {
	forever := revokeEntry("ns", "forever", 1)
	revokeUpsert(t, s, forever)
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	wantCount(t, 0, "Prune(year 9999)")(s.Prune(testContext(t), "ns", far))
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{forever})
}

func testPruneThenUpsert(t *testing.T, s revoke.Store) {
	// A pruned record is gone: any version may be stored again, and a
	// newer version that drops the expiry is never pruned.
	old := revokeEntry("ns", "t", 5)
	old.ExpiresAt = revokeBase
	revokeUpsert(t, s, old)
	wantCount(t, 1, "Prune")(s.Prune(testContext(t), "ns", revokeBase))
	again := revokeEntry("ns", "t", 2)
	expectEntries(t, "Upsert after prune", revokeUpsert(t, s, again), []revoke.Entry{again})

	expiring := revokeEntry("ns", "u", 1)
	expiring.ExpiresAt = revokeBase
	revokeUpsert(t, s, expiring)
	kept := revokeEntry("ns", "u", 2) // no expiry any more
	revokeUpsert(t, s, kept)
	wantCount(t, 0, "Prune after the expiry was dropped")(s.Prune(testContext(t), "ns", revokeBase.Add(time.Hour)))
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{again, kept})
}

func testRevokeValidation(t *testing.T, s revoke.Store) {
	ctx := testContext(t)
	good := revokeEntry("ns", "good", 1)
	bad := map[string]revoke.Entry{
		"empty namespace":  revokeEntry("", "t", 1),
		"empty task id":    revokeEntry("ns", "", 1),
		"zero version":     revokeEntry("ns", "t", 0),
		"negative version": revokeEntry("ns", "t", -3),
	}
	for name, e := range bad {
		// The bad entry comes second: nothing of the call may be stored.
		if got, err := s.Upsert(ctx, []revoke.Entry{good, e}); err == nil {
			t.Errorf("Upsert(%s) = %v, nil; want an error", name, got)
		}
	}
	expectEntries(t, "List after rejected upserts", revokeList(t, s, "ns"), nil)
	wantErrors(t, "(empty namespace)", nil, map[string]func() error{
		`List("")`:  func() error { _, err := s.List(ctx, ""); return err },
		`Prune("")`: func() error { _, err := s.Prune(ctx, "", revokeBase); return err },
	})
}

func testConcurrentSameTask(t *testing.T, s revoke.Store) {
	const writers, each = 8, 12
	versions := make([]int64, writers*each)
	for i := range versions {
		versions[i] = int64(i + 1)
	}
	rand.Shuffle(len(versions), func(i, j int) { versions[i], versions[j] = versions[j], versions[i] })
	ctx := testContext(t)
	concurrently(t, writers, func(w int) error {
		for _, v := range versions[w*each : (w+1)*each] {
			got, err := s.Upsert(ctx, []revoke.Entry{revokeEntry("ns", "t", v)})
			if err != nil {
				return err
			}
			if len(got) != 1 || got[0].Version < v {
				return fmt.Errorf("upsert of version %d returned %v: the stored entry can never be older than the input", v, entryIDs(got))
			}
		}
		return nil
	})
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{revokeEntry("ns", "t", writers*each)})
}

func testConcurrentDistinct(t *testing.T, s revoke.Store) {
	const writers, each = 6, 15
	ctx := testContext(t)
	concurrently(t, writers, func(w int) error {
		for i := range each {
			if _, err := s.Upsert(ctx, []revoke.Entry{revokeEntry("ns", fmt.Sprintf("w%d-%02d", w, i), int64(i+1))}); err != nil {
				return err
			}
		}
		return nil
	})
	if got := revokeList(t, s, "ns"); len(got) != writers*each {
		t.Fatalf("List after concurrent upserts of %d distinct tasks holds %d", writers*each, len(got))
	}
}

func testRoundTrip(t *testing.T, s revoke.Store) {
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	e := revoke.Entry{
		Namespace:   "ns.prod-1",
		TaskID:      "01JDF-task/with:odd chars ünïcødé",
		Version:     1763893815123456789,
		IssuedAt:    time.Date(2025, 11, 23, 16, 0, 15, 987_000_000, zone),
		Terminate:   true,
		Reason:      "runaway \"export\" job\nline two, tab\there, emoji 🛑",
		RequestedBy: "ops@example.com",
		ExpiresAt:   time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC),
	}
	expectEntries(t, "Upsert result", revokeUpsert(t, s, e), []revoke.Entry{e})
	expectEntries(t, "List", revokeList(t, s, e.Namespace), []revoke.Entry{e})
}

func testRoundTripZeroTimes(t *testing.T, s revoke.Store) {
	e := revoke.Entry{Namespace: "ns", TaskID: "bare", Version: 1}
	expectEntries(t, "Upsert result", revokeUpsert(t, s, e), []revoke.Entry{e})
	got := revokeList(t, s, "ns")
	expectEntries(t, "List", got, []revoke.Entry{e})
	if len(got) == 1 && (!got[0].IssuedAt.IsZero() || !got[0].ExpiresAt.IsZero()) {
		t.Fatalf("zero times came back as IssuedAt=%v ExpiresAt=%v; want zero times", got[0].IssuedAt, got[0].ExpiresAt)
	}
}

// revokeCalls are the calls of a revoke store that take a context.
func revokeCalls(ctx context.Context, s revoke.Store) map[string]func() error {
	return map[string]func() error{
		"Upsert": func() error { _, err := s.Upsert(ctx, []revoke.Entry{revokeEntry("ns", "t", 2)}); return err },
		"List":   func() error { _, err := s.List(ctx, "ns"); return err },
		"Prune":  func() error { _, err := s.Prune(ctx, "ns", revokeBase); return err },
		"Trim":   func() error { _, err := s.Trim(ctx, "ns", 1); return err },
	}
}

func testCanceledContext(t *testing.T, s revoke.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	wantErrors(t, "with a canceled context", nil, revokeCalls(ctx, s))
	expectEntries(t, "List", revokeList(t, s, "ns"), nil)
}

func testRevokeClosed(t *testing.T, s revoke.Store) {
	revokeUpsert(t, s, revokeEntry("ns", "t", 1))
	noErr(t, s.Close(), "Close")
	wantErrors(t, "after Close", revoke.ErrClosed, revokeCalls(testContext(t), s))
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// testTrimKeepsNewest: a namespace capped at keep entries keeps the
// highest versions (ties by the higher task id) and loses the rest; other
// namespaces are untouched.
func testTrimKeepsNewest(t *testing.T, s revoke.Store) {
	var all []revoke.Entry
	for i := 1; i <= 7; i++ {
		all = append(all, revokeEntry("ns", fmt.Sprintf("t%d", i), int64(i)))
	}
	tieA, tieB := revokeEntry("ns", "tie-a", 6), revokeEntry("ns", "tie-b", 6)
	all = append(all, tieA, tieB)
	other := revokeEntry("other", "t1", 1)
	revokeUpsert(t, s, append(all, other)...)

	wantCount(t, 5, "Trim(ns, 4)")(s.Trim(testContext(t), "ns", 4))
	// In List order (version, then task id): ..., t5, t6, tie-a, tie-b,
	// t7. The last four are kept.
	expectEntries(t, "List ns after Trim", revokeList(t, s, "ns"), []revoke.Entry{all[5], tieA, tieB, all[6]})
	expectEntries(t, "List other (not trimmed)", revokeList(t, s, "other"), []revoke.Entry{other})
	wantCount(t, 0, "second Trim")(s.Trim(testContext(t), "ns", 4))
	wantCount(t, 0, "Trim(unknown namespace)")(s.Trim(testContext(t), "nobody", 1))
}

func testTrimBadKeep(t *testing.T, s revoke.Store) {
	revokeUpsert(t, s, revokeEntry("ns", "t", 1))
	for _, keep := range []int{0, -1} {
		if _, err := s.Trim(testContext(t), "ns", keep); err == nil {
			t.Errorf("Trim(keep %d) succeeded; want an error", keep)
		}
	}
	expectEntries(t, "List", revokeList(t, s, "ns"), []revoke.Entry{revokeEntry("ns", "t", 1)})
}

// testSignedRoundTrip: a signed entry, times with nanoseconds, comes back
// with its signature and verifies (signatures cover times to the
// microsecond, which every store keeps); altered, it does not.
func testSignedRoundTrip(t *testing.T, s revoke.Store) {
	key := []byte("contract-key")
	e := revoke.Entry{Namespace: "ns", TaskID: "signed", Version: 1763893815123456789,
		IssuedAt: time.Date(2025, 11, 23, 10, 30, 15, 123456789, time.UTC), Terminate: true,
		Reason: "why", RequestedBy: "ops", ExpiresAt: time.Date(2025, 11, 24, 10, 30, 15, 999999999, time.UTC)}.Sign(key)
	unsigned := revokeEntry("ns", "unsigned", 2)
	revokeUpsert(t, s, e, unsigned)
	got := revokeList(t, s, "ns")
	if len(got) != 2 {
		t.Fatalf("List: %v", entryIDs(got))
	}
	if got[1].Sig != e.Sig {
		t.Fatalf("Sig came back as %q, want %q", got[1].Sig, e.Sig)
	}
	noErr(t, got[1].Verify(key), "a signed entry read back does not verify")
	if err := got[0].Verify(key); err == nil {
		t.Fatal("an unsigned entry verifies")
	}
	forged := got[1]
	forged.Terminate = false
	if err := forged.Verify(key); err == nil {
		t.Fatal("an altered entry verifies")
	}
	if err := got[1].Verify([]byte("other-key")); err == nil {
		t.Fatal("an entry verifies under another key")
	}
}
