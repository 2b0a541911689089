package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/engine"
	"github.com/stemhq/stem/internal/testutil"
)

func TestResolveURL(t *testing.T) {
	const (
		rv = "file:///var/lib/stem/revokes"
		rb = "postgres://db/stem"
		br = "redis://broker:6379/0"
	)
	tests := []struct {
		name     string
		env      map[string]string
		url, key string
	}{
		{"all set: the revoke store URL wins", map[string]string{"STEM_REVOKE_STORE_URL": rv, "STEM_RESULT_BACKEND_URL": rb, "STEM_BROKER_URL": br}, rv, "STEM_REVOKE_STORE_URL"},
		{"no revoke store URL: the result backend", map[string]string{"STEM_RESULT_BACKEND_URL": rb, "STEM_BROKER_URL": br}, rb, "STEM_RESULT_BACKEND_URL"},
		{"only the broker", map[string]string{"STEM_BROKER_URL": br}, br, "STEM_BROKER_URL"},
		{"revoke store and broker", map[string]string{"STEM_REVOKE_STORE_URL": rv, "STEM_BROKER_URL": br}, rv, "STEM_REVOKE_STORE_URL"},
		{"nothing: the default broker URL", map[string]string{"HOME": "/home/a"}, "sqlite:///home/a/.local/state/stem/stem.db", ""},
		{"blank counts as unset", map[string]string{"STEM_REVOKE_STORE_URL": "  ", "STEM_RESULT_BACKEND_URL": "", "STEM_BROKER_URL": br}, br, "STEM_BROKER_URL"},
		{"surrounding blanks trimmed", map[string]string{"STEM_REVOKE_STORE_URL": " " + rv + "\n"}, rv, "STEM_REVOKE_STORE_URL"},
		{"other variables ignored", map[string]string{"STEM_REVOKE_URL": rv, "HOME": "/home/a"}, "sqlite:///home/a/.local/state/stem/stem.db", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url, key := engine.ResolveRevokeURL(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if url != tc.url || key != tc.key {
				t.Fatalf("ResolveURL = %q, %q; want %q, %q", url, key, tc.url, tc.key)
			}
		})
	}
	if url, key := engine.ResolveRevokeURL(nil); url != config.DefaultBrokerURL(os.LookupEnv) || key != "" {
		t.Fatalf("ResolveURL(nil) = %q, %q", url, key)
	}
}

func TestOpenFileForms(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	tests := []struct{ raw, want string }{
		{"revokes.ndjson", filepath.Join(dir, "revokes.ndjson")},
		{"./a:b", filepath.Join(dir, "a:b")},
		{filepath.Join(dir, "abs"), filepath.Join(dir, "abs")},
		{"file://" + filepath.Join(dir, "url"), filepath.Join(dir, "url")},
		{"FILE://localhost" + filepath.Join(dir, "host"), filepath.Join(dir, "host")},
	}
	for _, tc := range tests {
		s, err := engine.OpenRevokeStore(context.Background(), engine.RevokeOptions{URL: tc.raw})
		if err != nil {
			t.Errorf("Open(%q): %v", tc.raw, err)
			continue
		}
		fs, ok := s.(*revoke.FileStore)
		if !ok || fs.Path() != tc.want {
			t.Errorf("Open(%q) = %T at %v; want a file store at %s", tc.raw, s, fs, tc.want)
		}
		_ = s.Close()
	}
}

func TestOpenMemory(t *testing.T) {
	s, err := engine.OpenRevokeStore(context.Background(), engine.RevokeOptions{URL: "memory://"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*revoke.Memory); !ok {
		t.Fatalf("Open(memory://) = %T", s)
	}
}

func TestOpenBadURLs(t *testing.T) {
	tests := []struct{ raw, wantMsg string }{
		{"", "empty"},
		{"   ", "empty"},
		{"mysql://root:s3cret@db/stem", `unsupported scheme "mysql"; supported: memory://, file://, redis://, rediss://, postgres://, postgresql://, sqlite:// or a bare file path`},
		{"sqlite://revokes.db", `names host "revokes.db"`},
		{"file://otherhost/var/revokes", `host "otherhost"`},
		{"file:relative", "absolute path"},
		{"file:///x?mode=ro", "query"},
		{"redis://u:s3cret@127.0.0.1:6379/notadb", "invalid"},
		{"postgres://u:s3cret@127.0.0.1/db?sslmode=bogus", "sslmode"},
	}
	for _, tc := range tests {
		_, err := engine.OpenRevokeStore(context.Background(), engine.RevokeOptions{URL: tc.raw, URLKey: "STEM_REVOKE_STORE_URL"})
		var ce *stem.ConfigError
		if !errors.As(err, &ce) && !errors.Is(err, stem.ErrIncompatible) {
			t.Errorf("Open(%q) = %v; want a *stem.ConfigError or stem.ErrIncompatible (exit 78)", tc.raw, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "STEM_REVOKE_STORE_URL") || !strings.Contains(msg, tc.wantMsg) || strings.Contains(msg, "s3cret") {
			t.Errorf("Open(%q) error %q: want key STEM_REVOKE_STORE_URL, %q, and no password", tc.raw, msg, tc.wantMsg)
		}
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope", "revokes")
	_, err := engine.OpenRevokeStore(context.Background(), engine.RevokeOptions{URL: missing})
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Open(%s) = %v; want a not-exist error naming the path", missing, err)
	}
}

// TestOpenEngineStores: an engine URL opens that engine's revoke store,
// which writes and reads back, and closing it closes the engine's
// connection.
func TestOpenEngineStores(t *testing.T) {
	urls := map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "stem.db") },
		"redis":    func(t *testing.T) string { return testutil.EnvOrSkip(t, "STEM_TEST_REDIS_URL") },
		"postgres": func(t *testing.T) string { return testutil.EnvOrSkip(t, "STEM_TEST_POSTGRES_URL") },
		"postgresql": func(t *testing.T) string {
			_, rest, _ := strings.Cut(testutil.EnvOrSkip(t, "STEM_TEST_POSTGRES_URL"), "://")
			return "postgresql://" + rest
		},
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			raw := url(t)
			ns := "stemtest_rv_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
			ctx := context.Background()
			s, err := engine.OpenRevokeStore(ctx, engine.RevokeOptions{URL: raw, Namespace: ns})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dropNamespace(t, raw, ns) })
			if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: ns, TaskID: "t", Version: 1}}); err != nil {
				t.Fatal(err)
			}
			if got, err := s.List(ctx, ns); err != nil || len(got) != 1 {
				t.Fatalf("List = %v, %v", got, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.List(ctx, ns); !errors.Is(err, revoke.ErrClosed) {
				t.Fatalf("List after Close = %v; want revoke.ErrClosed", err)
			}
		})
	}
}

// dropNamespace removes what a test wrote under ns: its Redis keys, its
// Postgres schema (a SQLite file goes with its temporary directory).
func dropNamespace(t *testing.T, raw, ns string) {
	ctx := context.Background()
	switch {
	case strings.HasPrefix(raw, "redis"):
		o, err := goredis.ParseURL(raw)
		if err != nil {
			return
		}
		c := goredis.NewClient(o)
		defer c.Close()
		keys, _ := c.Keys(ctx, ns+":*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	case strings.HasPrefix(raw, "postgres"):
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			t.Logf("drop schema %s: %v", ns, err)
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{ns}.Sanitize()+" CASCADE")
	}
}
