package revoke_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stemhq/stem/control/revoke"
)

// A revoke is written with Upsert (a higher version wins) and read back,
// in order, with List. engine.OpenRevokeStore opens a store from a URL.
func ExampleNewMemory() {
	ctx := context.Background()
	store := revoke.NewMemory()
	defer store.Close()

	issued := time.Date(2025, 11, 23, 10, 0, 0, 0, time.UTC)
	stored, err := store.Upsert(ctx, []revoke.Entry{
		{Namespace: "stem", TaskID: "report-42", Version: 2, IssuedAt: issued, Terminate: true, Reason: "runaway"},
		{Namespace: "stem", TaskID: "report-42", Version: 1, IssuedAt: issued, Reason: "older, loses"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range stored {
		fmt.Println("stored:", e.TaskID, e.Version, e.Reason)
	}
	entries, _ := store.List(ctx, "stem")
	fmt.Println("listed:", len(entries), entries[0].TaskID, entries[0].Terminate)
	// Output:
	// stored: report-42 2 runaway
	// stored: report-42 2 runaway
	// listed: 1 report-42 true
}

// A file store: one JSON object per line, locked against other processes.
func ExampleOpenFile() {
	dir, _ := os.MkdirTemp("", "revokes")
	defer os.RemoveAll(dir)
	store, err := revoke.OpenFile(filepath.Join(dir, "revokes.ndjson"), revoke.FileOptions{
		Warn: func(err error) { fmt.Println("warning:", err) },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	ctx := context.Background()
	expires := time.Date(2025, 11, 24, 0, 0, 0, 0, time.UTC)
	_, _ = store.Upsert(ctx, []revoke.Entry{{Namespace: "stem", TaskID: "t1", Version: 1, ExpiresAt: expires}})
	n, _ := store.Prune(ctx, "stem", expires)
	fmt.Println("pruned", n)
	// Output: pruned 1
}
