package revoke

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stemhq/stem/internal/fileperm"
)

// FileStore keeps revokes in a file of newline-delimited JSON, one Entry
// per line (docs/revoke-stores.md describes the format). It is safe for
// concurrent use by goroutines and by processes on the same host:
//
//   - Every read-modify-write (Upsert, Prune) holds an exclusive flock(2)
//     on the sidecar file "<path>.lock", so processes never lose each
//     other's updates. The lock is on a sidecar, not on the data file,
//     because the data file is replaced by rename and a lock on a replaced
//     inode would exclude nobody.
//   - Every write replaces the file atomically: the new content is written
//     to a temporary file in the same directory, fsynced, renamed over the
//     path, and the directory is fsynced. A reader sees the old file or the
//     new one, never a mix, so List reads without the lock.
//   - On load the highest Version of a (namespace, task id) wins, whatever
//     the order of the lines.
//   - A torn last line (no newline at the end and not valid JSON: a writer
//     that appended and crashed) is skipped, reported through
//     FileOptions.Warn, and dropped at the next write.
//   - A corrupt line elsewhere (bad JSON, or an entry that fails Validate)
//     is skipped and reported as a *LineError naming the file and line; the
//     other lines are loaded as usual, and writes keep the corrupt line
//     verbatim (at the top of the file) so nothing is lost before someone
//     repairs it.
type FileStore struct {
	path     string
	lockPath string
	warn     func(error)
	// sem serialises this store's read-modify-writes before they take
	// the flock, so waiting goroutines do not each block an OS thread.
	sem    chan struct{}
	closed atomic.Bool

	warnMu sync.Mutex
	warned map[string]bool
}

// FileOptions configure a FileStore.
type FileOptions struct {
	// Warn receives the problems the store works around rather than fails
	// on: a torn last line or a corrupt line, each a *LineError naming the
	// file and line. Each distinct problem is reported once per FileStore.
	// Nil discards them.
	Warn func(error)
}

// LineError is a line of a revoke file that could not be loaded. The store
// skips the line and loads the others.
type LineError struct {
	// Path is the revoke file.
	Path string
	// Line is the 1-based line number.
	Line int
	// Torn is set for a last line without a newline that does not parse: a
	// write interrupted mid-line. It is dropped at the next write.
	Torn bool
	// Err says what is wrong with the line.
	Err error
}

func (e *LineError) Error() string {
	if e.Torn {
		return fmt.Sprintf("%s:%d: torn last line (no trailing newline: an interrupted write), skipped: %v", e.Path, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: corrupt revoke line, skipped (kept in the file; repair or delete it): %v", e.Path, e.Line, e.Err)
}

// Unwrap returns the cause.
func (e *LineError) Unwrap() error { return e.Err }

// OpenFile returns a store on the revoke file at path, which may be
// relative (it is made absolute now) and need not exist yet: it is created
// by the first write. Its directory must exist. OpenFile reads the file
// once, so an unreadable file fails here and corrupt lines are reported
// through opts.Warn at once.
func OpenFile(path string, opts FileOptions) (*FileStore, error) {
	if path == "" {
		return nil, errors.New("revoke file: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("revoke file %s: %w", path, err)
	}
	// Writes rename over the path; through a symlink they would replace
	// the link, so follow it (it may point to a file not created yet).
	for hops := 0; ; hops++ {
		fi, err := os.Lstat(abs)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		if hops == 40 {
			return nil, fmt.Errorf("revoke file %s: too many levels of symbolic links", path)
		}
		target, err := os.Readlink(abs)
		if err != nil {
			return nil, fmt.Errorf("revoke file %s: %w", path, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(abs), target)
		}
		abs = target
	}
	dir := filepath.Dir(abs)
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("revoke file %s: directory: %w", abs, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("revoke file %s: %s is not a directory", abs, dir)
	}
	s := &FileStore{
		path:     abs,
		lockPath: abs + ".lock",
		warn:     opts.Warn,
		sem:      make(chan struct{}, 1),
		warned:   map[string]bool{},
	}
	if _, _, err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the absolute path of the revoke file.
func (s *FileStore) Path() string { return s.path }

// Upsert implements Store. It rewrites the file only when an entry won.
func (s *FileStore) Upsert(ctx context.Context, entries []Entry) ([]Entry, error) {
	if err := CheckUpsert(ctx, s.closed.Load(), entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []Entry{}, nil
	}
	for _, e := range entries {
		if _, err := EncodeEntry(e); err != nil {
			return nil, err
		}
	}
	latest := make(map[Key]Entry, len(entries))
	err := s.update(ctx, func(recs map[Key]Entry) bool {
		changed := false
		for _, e := range entries {
			k := KeyOf(e)
			if cur, ok := recs[k]; !ok || e.Version > cur.Version {
				recs[k] = e
				changed = true
			}
			latest[k] = recs[k]
		}
		return changed
	})
	if err != nil {
		return nil, err
	}
	return ResultsFor(entries, latest), nil
}

// List implements Store. It reads the file without the lock: writes
// replace it atomically.
func (s *FileStore) List(ctx context.Context, namespace string) ([]Entry, error) {
	if err := CheckCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := CheckNamespace("list", namespace); err != nil {
		return nil, err
	}
	f, _, err := s.load()
	if err != nil {
		return nil, err
	}
	out := []Entry{}
	for k, e := range f.recs {
		if k.namespace == namespace {
			out = append(out, e)
		}
	}
	SortEntries(out)
	return out, nil
}

// Prune implements Store. It rewrites the file only when it removed
// something.
func (s *FileStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := CheckCall(ctx, s.closed.Load()); err != nil {
		return 0, err
	}
	if err := CheckNamespace("prune", namespace); err != nil {
		return 0, err
	}
	n := 0
	err := s.update(ctx, func(recs map[Key]Entry) bool {
		for k, e := range recs {
			if k.namespace == namespace && e.Expired(now) {
				delete(recs, k)
				n++
			}
		}
		return n > 0
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Trim implements Store, under the lock like Prune.
func (s *FileStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := CheckTrim(ctx, s.closed.Load(), namespace, keep); err != nil {
		return 0, err
	}
	n := 0
	err := s.update(ctx, func(recs map[Key]Entry) bool {
		var all []Entry
		for k, e := range recs {
			if k.namespace == namespace {
				all = append(all, e)
			}
		}
		for _, e := range TrimVictims(all, keep) {
			delete(recs, KeyOf(e))
			n++
		}
		return n > 0
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Close marks the store closed; later calls return ErrClosed. The store
// holds no descriptor between calls, so there is nothing else to release.
// Closing twice is safe.
func (s *FileStore) Close() error {
	s.closed.Store(true)
	return nil
}

// update runs one read-modify-write under the lock. fn changes recs in
// place and reports whether it changed anything; the file is rewritten
// only then.
func (s *FileStore) update(ctx context.Context, fn func(recs map[Key]Entry) bool) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("revoke file %s: %w", s.path, ctx.Err())
	}
	defer func() { <-s.sem }()
	unlock, err := lockFile(ctx, s.lockPath)
	if err != nil {
		return err
	}
	defer unlock()
	f, mode, err := s.load()
	if err != nil {
		return err
	}
	if !fn(f.recs) {
		return nil
	}
	data, err := f.render()
	if err != nil {
		return fmt.Errorf("revoke file %s: %w", s.path, err)
	}
	return writeAtomic(s.path, data, mode)
}

// fileContent is a parsed revoke file.
type fileContent struct {
	recs map[Key]Entry
	// corrupt holds the corrupt lines verbatim, in file order, to be
	// written back.
	corrupt [][]byte
}

// load reads and parses the file, reporting problems through Warn. A
// missing file is empty. mode is what a rewrite gives the file (see
// package fileperm): 0640 minus the umask for a new file, the file's own
// mode without the world-write bit for an existing one.
func (s *FileStore) load() (fileContent, fs.FileMode, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileContent{recs: map[Key]Entry{}}, fileperm.CreateMode(), nil
	}
	if err != nil {
		return fileContent{}, 0, fmt.Errorf("revoke file %s: %w", s.path, err)
	}
	mode := fileperm.CreateMode()
	if fi, err := os.Stat(s.path); err == nil {
		mode = fileperm.KeepMode(fi.Mode())
	}
	f, problems := parseFile(s.path, data)
	for _, p := range problems {
		s.report(p)
	}
	return f, mode, nil
}

// report hands a problem to Warn once per distinct message.
func (s *FileStore) report(err error) {
	if s.warn == nil {
		return
	}
	msg := err.Error()
	s.warnMu.Lock()
	seen := s.warned[msg]
	if !seen {
		if len(s.warned) >= 1000 { // bound the memory of a long-lived store
			clear(s.warned)
		}
		s.warned[msg] = true
	}
	s.warnMu.Unlock()
	if !seen {
		s.warn(err)
	}
}

// parseFile parses a revoke file's content. It never fails: bad lines are
// returned as problems and the good ones loaded. The highest version of a
// key wins; of equal versions, the first line.
func parseFile(path string, data []byte) (fileContent, []*LineError) {
	f := fileContent{recs: map[Key]Entry{}}
	var problems []*LineError
	lines := bytes.Split(data, []byte{'\n'})
	for i, raw := range lines {
		last := i == len(lines)-1 // the text after the final newline, if any
		line := bytes.TrimSpace(raw)
		if len(line) == 0 {
			continue
		}
		e, err := parseLine(line)
		if err != nil {
			problems = append(problems, &LineError{Path: path, Line: i + 1, Torn: last, Err: err})
			if !last {
				f.corrupt = append(f.corrupt, bytes.Clone(bytes.TrimRight(raw, "\r")))
			}
			continue
		}
		k := KeyOf(e)
		if cur, ok := f.recs[k]; !ok || e.Version > cur.Version {
			f.recs[k] = e
		}
	}
	return f, problems
}

// parseLine decodes one line into a valid Entry.
func parseLine(line []byte) (Entry, error) {
	if line[0] != '{' {
		return Entry{}, fmt.Errorf("not a JSON object: %q", Truncate(line, 60))
	}
	var e Entry
	if err := json.Unmarshal(line, &e); err != nil {
		return Entry{}, fmt.Errorf("invalid JSON: %v", err)
	}
	if err := e.Validate(); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// render returns the file content: the corrupt lines kept verbatim, then
// one JSON line per entry, sorted by namespace, version and task id so the
// file diffs well.
func (f fileContent) render() ([]byte, error) {
	entries := make([]Entry, 0, len(f.recs))
	for _, e := range f.recs {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b Entry) int {
		if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Version, b.Version); c != 0 {
			return c
		}
		return cmp.Compare(a.TaskID, b.TaskID)
	})
	var buf bytes.Buffer
	for _, line := range f.corrupt {
		buf.Write(line)
		buf.WriteByte('\n')
	}
	for _, e := range entries {
		// Entries were either parsed from JSON or checked by encodeEntry
		// in Upsert, so this does not fail; if it did, nothing is written.
		line, err := EncodeEntry(e)
		if err != nil {
			return nil, err
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

// writeAtomic replaces path with data: a temporary file in the same
// directory is written, fsynced and renamed over path, and the directory
// is fsynced so the rename survives a crash.
func writeAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("revoke file %s: create temporary file: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("revoke file %s: write %s: %w", path, tmp.Name(), err)
	}
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("revoke file %s: chmod %s: %w", path, tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("revoke file %s: fsync %s: %w", path, tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("revoke file %s: close %s: %w", path, tmp.Name(), err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("revoke file %s: rename %s: %w", path, tmp.Name(), err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("revoke file %s: open directory to fsync: %w", path, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("revoke file %s: fsync directory %s: %w", path, dir, err)
	}
	return nil
}
