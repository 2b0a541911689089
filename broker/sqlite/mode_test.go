package sqlite

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDatabaseModesUnderUmaskZero: a database stem creates, and so its -wal
// and -shm files (SQLite gives them the database's mode), is 0640 even with
// umask 0, not SQLite's world-readable 0644. An existing database keeps its
// mode unless it is world-writable. It changes the process umask, so it
// must not run in parallel with other tests.
func TestDatabaseModesUnderUmaskZero(t *testing.T) {
	old := unix.Umask(0)
	t.Cleanup(func() { unix.Umask(old) })
	dir := t.TempDir()
	path := filepath.Join(dir, "custom.db")
	e := openTestEngine(t, path, Options{})
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o640 {
			t.Errorf("%s: mode %04o, want 0640", p, m)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ before, after fs.FileMode }{{0o644, 0o644}, {0o600, 0o600}, {0o666, 0o664}} {
		if err := os.Chmod(path, tt.before); err != nil {
			t.Fatal(err)
		}
		e := openTestEngine(t, path, Options{})
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != tt.after {
			t.Errorf("existing database of mode %04o: %04o after Open, want %04o", tt.before, m, tt.after)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
