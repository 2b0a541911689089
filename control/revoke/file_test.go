package revoke_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/internal/testutil"
)

func TestFileContract(t *testing.T) {
	conformance.RevokeStore(t, func(t *testing.T) revoke.Store {
		s, err := revoke.OpenFile(filepath.Join(t.TempDir(), "revokes.ndjson"), revoke.FileOptions{
			Warn: func(err error) { t.Errorf("unexpected warning: %v", err) },
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// warnings collects what a store reports through Warn.
type warnings struct {
	mu   sync.Mutex
	errs []error
}

func (w *warnings) add(err error) { w.mu.Lock(); w.errs = append(w.errs, err); w.mu.Unlock() }

func (w *warnings) list() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]error(nil), w.errs...)
}

// openFile opens a store on path collecting its warnings.
func openFile(t *testing.T, path string) (*revoke.FileStore, *warnings) {
	t.Helper()
	w := &warnings{}
	s, err := revoke.OpenFile(path, revoke.FileOptions{Warn: w.add})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, w
}

func line(ns, task string, version int64, reason string) string {
	return fmt.Sprintf(`{"namespace":%q,"taskId":%q,"version":%d,"issuedAt":"2025-11-23T10:00:00Z","terminate":false,"reason":%q}`, ns, task, version, reason)
}

func versions(t *testing.T, s revoke.Store, ns string) map[string]int64 {
	t.Helper()
	es, err := s.List(context.Background(), ns)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	out := map[string]int64{}
	for _, e := range es {
		out[e.TaskID] = e.Version
	}
	return out
}

func TestFileHighestVersionWinsOnLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes")
	// The original let the last line win; here the highest version does,
	// wherever its line is.
	content := strings.Join([]string{
		line("ns", "a", 9, "newest, first"),
		line("ns", "a", 3, "older, later"),
		line("ns", "b", 1, "old"),
		line("ns", "b", 2, "new"),
		line("other", "a", 1, "other namespace"),
	}, "\n") + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	s, w := openFile(t, path)
	got, err := s.List(context.Background(), "ns")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].TaskID != "b" || got[0].Version != 2 || got[1].TaskID != "a" || got[1].Version != 9 || got[1].Reason != "newest, first" {
		t.Fatalf("List = %+v; want b@2 then a@9", got)
	}
	if len(w.list()) != 0 {
		t.Fatalf("warnings on a good file: %v", w.list())
	}
	// A write compacts the file to one line per record and keeps its mode.
	if _, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "c", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 4 {
		t.Fatalf("file after a write has %d lines, want 4:\n%s", n, data)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode after a write = %v, want 0600 kept", fi.Mode().Perm())
	}
}

func TestFileTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes")
	torn := line("ns", "b", 2, "torn")
	content := line("ns", "a", 1, "ok") + "\n" + torn[:len(torn)/2] // crash mid-append
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	s, w := openFile(t, path)
	if got := versions(t, s, "ns"); len(got) != 1 || got["a"] != 1 {
		t.Fatalf("List = %v; want a@1 only", got)
	}
	ws := w.list()
	var le *revoke.LineError
	if len(ws) != 1 || !errors.As(ws[0], &le) || !le.Torn || le.Line != 2 || le.Path != path {
		t.Fatalf("warnings = %v; want one torn-line *LineError for %s:2", ws, path)
	}
	if !strings.Contains(ws[0].Error(), path+":2:") {
		t.Fatalf("warning %q does not name the file and line", ws[0])
	}
	// A write drops the torn line (its writer never finished) and keeps
	// the rest.
	if _, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "c", Version: 5}}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), `"torn`) || !strings.HasSuffix(string(data), "\n") {
		t.Fatalf("file after a write still holds the torn line or lacks a final newline:\n%s", data)
	}
	s2, w2 := openFile(t, path)
	if got := versions(t, s2, "ns"); len(got) != 2 || got["a"] != 1 || got["c"] != 5 {
		t.Fatalf("reopened List = %v; want a@1 and c@5", got)
	}
	if len(w2.list()) != 0 {
		t.Fatalf("warnings after the rewrite: %v", w2.list())
	}
}

func TestFileLastLineWithoutNewlineIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes")
	// A complete last line that lacks only the newline (a hand edit) is fine.
	if err := os.WriteFile(path, []byte(line("ns", "a", 1, "x")+"\n"+line("ns", "b", 2, "y")), 0o644); err != nil {
		t.Fatal(err)
	}
	s, w := openFile(t, path)
	if got := versions(t, s, "ns"); len(got) != 2 {
		t.Fatalf("List = %v; want a and b", got)
	}
	if len(w.list()) != 0 {
		t.Fatalf("warnings: %v", w.list())
	}
}

func TestFileCorruptLineKeepsTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes")
	bad := `{"namespace":"ns","taskId":"broken","version":` // a damaged line, mid-file
	invalid := `{"namespace":"ns","taskId":"","version":3}` // valid JSON, invalid entry
	content := strings.Join([]string{
		line("ns", "a", 1, "before"),
		bad,
		line("ns", "b", 2, "after"),
		"",
		invalid,
		line("ns", "c", 3, "last"),
	}, "\n") + "\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	s, w := openFile(t, path)
	if got := versions(t, s, "ns"); len(got) != 3 || got["a"] != 1 || got["b"] != 2 || got["c"] != 3 {
		t.Fatalf("List = %v; want a, b and c (the rest kept)", got)
	}
	ws := w.list()
	if len(ws) != 2 {
		t.Fatalf("warnings = %v; want two", ws)
	}
	for i, want := range []string{path + ":2:", path + ":5:"} {
		var le *revoke.LineError
		if !errors.As(ws[i], &le) || le.Torn || !strings.HasPrefix(ws[i].Error(), want) {
			t.Errorf("warning %d = %v; want a corrupt-line *LineError starting %q", i, ws[i], want)
		}
	}
	// The same problems are not reported again by the same store.
	versions(t, s, "ns")
	if n := len(w.list()); n != 2 {
		t.Fatalf("%d warnings after a second List; want still 2", n)
	}

	// Writes keep every good line and the corrupt ones verbatim, so
	// nothing is lost before someone repairs the file.
	if _, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "d", Version: 4}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(context.Background(), "ns", time.Now()); err != nil || n != 0 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	data, _ := os.ReadFile(path)
	for _, want := range []string{bad, invalid} {
		if !strings.Contains(string(data), want+"\n") {
			t.Errorf("rewritten file lost the corrupt line %q:\n%s", want, data)
		}
	}
	s2, w2 := openFile(t, path)
	if got := versions(t, s2, "ns"); len(got) != 4 {
		t.Fatalf("reopened List = %v; want a, b, c and d", got)
	}
	if n := len(w2.list()); n != 2 {
		t.Fatalf("reopened store reported %d problems; want the 2 corrupt lines again", n)
	}
}

func TestFileAtomicReplaceLeavesNoTemporaries(t *testing.T) {
	dir := t.TempDir()
	s, _ := openFile(t, filepath.Join(dir, "revokes"))
	for i := range 5 {
		if _, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: int64(i + 1)}}); err != nil {
			t.Fatal(err)
		}
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	names = append(names, hidden...)
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	if strings.Join(names, " ") != "revokes revokes.lock" {
		t.Fatalf("directory holds %v; want the file and its lock only", names)
	}
}

func TestFileOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := revoke.OpenFile(filepath.Join(dir, "missing", "revokes"), revoke.FileOptions{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing directory: %v; want an error naming it", err)
	}
	if _, err := revoke.OpenFile(dir, revoke.FileOptions{}); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("a directory as the file: %v; want an error naming it", err)
	}
	if _, err := revoke.OpenFile("", revoke.FileOptions{}); err == nil {
		t.Error("empty path: no error")
	}
}

func TestFileSymlinkIsFollowed(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s, _ := openFile(t, link)
	if _, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced: %v %v", fi, err)
	}
	if _, err := os.Stat(real); err != nil {
		t.Fatalf("the target was not written: %v", err)
	}
}

func TestFileLockWaitHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revokes")
	s, _ := openFile(t, path)
	// Another process holds the lock: simulate it with our own descriptor.
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), path+".lock") {
		t.Fatalf("Upsert while another holds the lock: %v; want a deadline error naming the lock", err)
	}
	// Once the holder lets go, the store works again (and the abandoned
	// wait releases the lock it then takes).
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 2}})
		return err == nil
	}, "the store never got the lock back")
}

// The two-process test: defect 13 of the original was a file store that
// lost updates across processes. Two copies of this test binary each
// upsert hundreds of distinct tasks, one read-modify-write at a time, into
// one file, plus versions of a shared task; every task must be there
// afterwards and the shared task must hold the highest version.

const (
	helperEnv   = "STEM_REVOKE_TEST_HELPER"
	helperTasks = 300
)

func TestFileTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns two processes")
	}
	path := filepath.Join(t.TempDir(), "revokes")
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for p := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFileHelperProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"="+path+"|"+strconv.Itoa(p))
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for p, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper process %d: %v\n%s", p, err, outs[p])
		}
		if !strings.Contains(outs[p].String(), "helper done") {
			t.Fatalf("helper process %d did not run the helper:\n%s", p, outs[p])
		}
	}
	s, w := openFile(t, path)
	got := versions(t, s, "ns")
	for p := range 2 {
		for i := range helperTasks {
			if id := fmt.Sprintf("p%d-%03d", p, i); got[id] != 1 {
				t.Errorf("task %s lost", id)
			}
		}
	}
	if want := int64(2*helperTasks + 1); got["shared"] != want {
		t.Errorf("shared task at version %d, want %d", got["shared"], want)
	}
	if len(got) != 2*helperTasks+1 {
		t.Errorf("%d tasks stored, want %d", len(got), 2*helperTasks+1)
	}
	if len(w.list()) != 0 {
		t.Errorf("warnings: %v", w.list())
	}
}

// TestFileHelperProcess is the body of TestFileTwoProcesses's helper
// processes; it does nothing unless run as one.
func TestFileHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("run by TestFileTwoProcesses")
	}
	path, p, _ := strings.Cut(spec, "|")
	proc, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("bad %s=%q", helperEnv, spec)
	}
	s, err := revoke.OpenFile(path, revoke.FileOptions{Warn: func(err error) { t.Errorf("warning: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i := range helperTasks {
		// Process 0 writes odd versions of the shared task, process 1 even
		// ones; the highest, 2*helperTasks+1, comes from process 0's last.
		shared := int64(2*i + 1 + proc)
		if proc == 0 && i == helperTasks-1 {
			shared = 2*helperTasks + 1
		}
		entries := []revoke.Entry{
			{Namespace: "ns", TaskID: fmt.Sprintf("p%d-%03d", proc, i), Version: 1},
			{Namespace: "ns", TaskID: "shared", Version: shared},
		}
		if _, err := s.Upsert(ctx, entries); err != nil {
			t.Fatalf("upsert %d: %v", i, err)
		}
	}
	fmt.Println("helper done")
}

// TestFileModesUnderUmaskZero: the revoke file and its lock sidecar are
// created 0640 even with umask 0; an existing file keeps its mode, except
// that a world-writable one loses the world-write bit. It changes the
// process umask, so it must not run in parallel with other tests.
func TestFileModesUnderUmaskZero(t *testing.T) {
	old := unix.Umask(0)
	t.Cleanup(func() { unix.Umask(old) })
	ctx := context.Background()
	upsert := func(s *revoke.FileStore, id string) {
		t.Helper()
		if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: id, Version: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	mode := func(path string) fs.FileMode {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	path := filepath.Join(t.TempDir(), "revokes")
	s, err := revoke.OpenFile(path, revoke.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	upsert(s, "a")
	for _, p := range []string{path, path + ".lock"} {
		if m := mode(p); m != 0o640 {
			t.Errorf("%s: mode %04o, want 0640", p, m)
		}
	}
	for _, tt := range []struct{ before, after fs.FileMode }{{0o644, 0o644}, {0o600, 0o600}, {0o666, 0o664}} {
		if err := os.Chmod(path, tt.before); err != nil {
			t.Fatal(err)
		}
		upsert(s, fmt.Sprintf("m%o", tt.before))
		if m := mode(path); m != tt.after {
			t.Errorf("existing file of mode %04o: %04o after a write, want %04o", tt.before, m, tt.after)
		}
	}
}
