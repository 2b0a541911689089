package revoke

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/stemerr"
)

// Schemes lists the URL schemes Open accepts, besides a bare path.
var Schemes = []string{"memory", "file", "redis", "rediss", "postgres", "postgresql", "sqlite"}

// Options configure Open. Each store uses the fields that concern it.
type Options struct {
	// URLKey names where the URL came from (the variable or flag, as
	// ResolveURL returns it), for error messages; "revoke store URL" when
	// empty.
	URLKey string
	// Warn receives problems a store works around rather than fails on: a
	// torn or corrupt line of a revoke file, an undecodable Redis value.
	// Nil discards them.
	Warn func(error)
	// RedisKeyPrefix is RedisOptions.KeyPrefix.
	RedisKeyPrefix string
	// PostgresTable is PostgresOptions.Table.
	PostgresTable string
}

// Open opens the store named by rawURL:
//
//	memory://[name]                  in-process; every Open of the same URL in
//	                                 one process shares the records (tests)
//	file:///abs/path or a bare path  newline-delimited JSON file (OpenFile)
//	redis://, rediss://              Redis (OpenRedis)
//	postgres://, postgresql://       Postgres (OpenPostgres)
//	sqlite:///abs/path.db            the stem SQLite database of the engine
//	                                 (OpenSQLite; the file must already be one)
//
// A bare path is anything without a "scheme:" prefix ("revokes.ndjson",
// "./a:b", "/var/lib/stem/revokes"); a relative one is resolved against
// the working directory now. A URL with an unknown scheme, or a malformed
// one, is a *stemerr.ConfigError (exit 78) that lists the supported schemes and
// shows the URL with its password redacted. A server that does not answer
// is an error wrapping stemerr.ErrUnavailable.
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	st, err := openStore(ctx, rawURL, opts)
	// Drivers may quote the URL or its password in their errors.
	return st, stemerr.RedactError(err, rawURL)
}

func openStore(ctx context.Context, rawURL string, opts Options) (Store, error) {
	keyName := opts.URLKey
	if keyName == "" {
		keyName = "revoke store URL"
	}
	bad := func(msg string) error {
		return &stemerr.ConfigError{Key: keyName, Value: stemerr.RedactURL(rawURL), Msg: msg}
	}
	raw := strings.TrimSpace(rawURL)
	if raw == "" {
		return nil, &stemerr.ConfigError{Key: keyName, Msg: "empty; want " + supported()}
	}
	scheme := schemeOf(raw)
	switch scheme {
	case "":
		return OpenFile(raw, FileOptions{Warn: opts.Warn})
	case "file":
		path, err := filePath(raw)
		if err != nil {
			return nil, bad(err.Error())
		}
		return OpenFile(path, FileOptions{Warn: opts.Warn})
	case "memory":
		if _, err := url.Parse(raw); err != nil {
			return nil, bad(fmt.Sprintf("not a URL: %v", err))
		}
		return sharedMemory(raw), nil
	case "redis", "rediss":
		s, err := OpenRedis(ctx, raw, RedisOptions{KeyPrefix: opts.RedisKeyPrefix, Warn: opts.Warn})
		if err != nil {
			return nil, rekey(err, keyName)
		}
		return s, nil
	case "postgres", "postgresql":
		s, err := OpenPostgres(ctx, raw, PostgresOptions{Table: opts.PostgresTable})
		if err != nil {
			return nil, rekey(err, keyName)
		}
		return s, nil
	case "sqlite":
		var so SQLiteOptions
		if _, err := ParseSQLiteTarget(raw, &so); err != nil {
			return nil, bad(err.Error())
		}
		s, err := OpenSQLite(ctx, raw, so)
		if err != nil {
			return nil, err
		}
		return s, nil
	default:
		return nil, bad(fmt.Sprintf("unsupported scheme %q; supported: %s", scheme, supported()))
	}
}

// schemeRE matches a URL scheme (RFC 3986) and its colon.
var schemeRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*):`)

// schemeOf returns the lower-cased scheme of raw, or "" for a bare path.
func schemeOf(raw string) string {
	m := schemeRE.FindStringSubmatch(raw)
	if m == nil {
		return ""
	}
	return strings.ToLower(m[1])
}

// filePath returns the path of a file:// URL, which must be absolute
// (file:///abs/path; file://localhost/abs/path is accepted too).
func filePath(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("not a URL: %v", err)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file URL with host %q: want file:///absolute/path, or a bare path for a relative one", u.Host)
	}
	if u.Opaque != "" || u.Path == "" || !strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("file URL without an absolute path: want file:///absolute/path, or a bare path for a relative one")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("file URL with a query or fragment: want file:///absolute/path")
	}
	return u.Path, nil
}

func supported() string {
	var out []string
	for _, s := range Schemes {
		out = append(out, s+"://")
	}
	return strings.Join(out, ", ") + " or a bare file path"
}

// rekey sets the Key of a *stemerr.ConfigError from a store constructor to the
// variable the URL came from.
func rekey(err error, keyName string) error {
	if ce, ok := err.(*stemerr.ConfigError); ok {
		c := *ce
		c.Key = keyName
		return &c
	}
	return err
}

// The variables ResolveURL reads, in order of precedence.
const (
	EnvRevokeStoreURL   = "STEM_REVOKE_STORE_URL"
	EnvResultBackendURL = "STEM_RESULT_BACKEND_URL"
	EnvBrokerURL        = "STEM_BROKER_URL"
)

// ResolveURL returns the revoke store URL and the variable it came from:
// STEM_REVOKE_STORE_URL, else STEM_RESULT_BACKEND_URL, else
// STEM_BROKER_URL, else config.DefaultBrokerURL (fromKey is then ""). A
// variable set to blanks counts as unset. lookup is os.LookupEnv or a
// config.Lookup's getter.
func ResolveURL(lookup func(key string) (string, bool)) (url, fromKey string) {
	for _, k := range []string{EnvRevokeStoreURL, EnvResultBackendURL, EnvBrokerURL} {
		if lookup == nil {
			break
		}
		if v, ok := lookup(k); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v), k
		}
	}
	return config.DefaultBrokerURL(lookup), ""
}

// compile-time checks that every store implements Store.
var (
	_ Store = (*Memory)(nil)
	_ Store = (*FileStore)(nil)
	_ Store = (*RedisStore)(nil)
	_ Store = (*PostgresStore)(nil)
)
