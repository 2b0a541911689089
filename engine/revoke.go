package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control/revoke"
)

// RevokeSchemes lists the URL schemes OpenRevokeStore accepts, besides a
// bare path.
var RevokeSchemes = []string{"memory", "file", "redis", "rediss", "postgres", "postgresql", "sqlite"}

// RevokeOptions say which revoke store to open.
type RevokeOptions struct {
	// URL names the store (see OpenRevokeStore).
	URL string
	// URLKey names where the URL came from (the variable or flag, as
	// ResolveRevokeURL returns it), for error messages; "revoke store URL"
	// when empty.
	URLKey string
	// Namespace is the engine namespace (Redis key prefix, Postgres
	// schema) of an engine URL; "stem" when empty.
	Namespace string
	// RedisRequireAOF is Options.RedisRequireAOF.
	RedisRequireAOF bool
	// Warn receives problems a store works around rather than fails on: a
	// torn or corrupt line of a revoke file, an undecodable Redis value, a
	// Redis without AOF. Nil discards them.
	Warn func(error)
}

// OpenRevokeStore opens the revoke store named by o.URL:
//
//	memory://[name]                  in-process; every open of the same URL in
//	                                 one process shares the records (tests)
//	file:///abs/path or a bare path  newline-delimited JSON file (revoke.OpenFile)
//	redis://, rediss://,             the revoke store of that engine, opened
//	postgres://, postgresql://,      as Open opens it (a SQLite file is created
//	sqlite:///abs/path.db            and migrated like the broker's)
//
// A bare path is anything without a "scheme:" prefix ("revokes.ndjson",
// "./a:b", "/var/lib/stem/revokes"); a relative one is resolved against
// the working directory now. A URL with an unknown scheme, or a malformed
// one, is a *stem.ConfigError (exit 78) keyed by o.URLKey that lists
// the supported schemes and shows the URL with its password redacted. A
// server that does not answer is an error wrapping stem.ErrUnavailable.
// Closing an engine's store closes the connection it opened.
func OpenRevokeStore(ctx context.Context, o RevokeOptions) (revoke.Store, error) {
	st, err := openRevokeStore(ctx, o)
	// Drivers may quote the URL or its password in their errors.
	return st, stem.RedactError(err, o.URL)
}

func openRevokeStore(ctx context.Context, o RevokeOptions) (revoke.Store, error) {
	keyName := o.URLKey
	if keyName == "" {
		keyName = "revoke store URL"
	}
	bad := func(msg string) error {
		return &stem.ConfigError{Key: keyName, Value: stem.RedactURL(o.URL), Msg: msg}
	}
	raw := strings.TrimSpace(o.URL)
	if raw == "" {
		return nil, &stem.ConfigError{Key: keyName, Msg: "empty; want " + revokeSupported()}
	}
	switch scheme := schemeOf(raw); scheme {
	case "":
		return revoke.OpenFile(raw, revoke.FileOptions{Warn: o.Warn})
	case "file":
		path, err := filePath(raw)
		if err != nil {
			return nil, bad(err.Error())
		}
		return revoke.OpenFile(path, revoke.FileOptions{Warn: o.Warn})
	case "memory":
		if _, err := url.Parse(raw); err != nil {
			return nil, bad(fmt.Sprintf("not a URL: %v", err))
		}
		return revoke.SharedMemory(raw), nil
	case "redis", "rediss", "postgres", "postgresql", "sqlite":
		x, err := open(ctx, raw, Options{Namespace: o.Namespace, RedisRequireAOF: o.RedisRequireAOF, Warn: o.Warn})
		if err != nil {
			return nil, rekey(err, keyName)
		}
		return &ownedStore{Store: x.revokes, closer: x}, nil
	default:
		return nil, bad(fmt.Sprintf("unsupported scheme %q; supported: %s", scheme, revokeSupported()))
	}
}

// ownedStore is an engine's revoke store that owns the engine: closing it
// closes both.
type ownedStore struct {
	revoke.Store
	closer io.Closer
}

func (s *ownedStore) Close() error {
	err := s.Store.Close()
	if cerr := s.closer.Close(); err == nil {
		err = cerr
	}
	return err
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

func revokeSupported() string {
	var out []string
	for _, s := range RevokeSchemes {
		out = append(out, s+"://")
	}
	return strings.Join(out, ", ") + " or a bare file path"
}

// rekey makes a configuration error name the variable the URL came from:
// a *stem.ConfigError gets Key keyName; an engine's
// stem.ErrIncompatible (a malformed URL, a file that is not stem's) is
// prefixed with it. Both exit 78.
func rekey(err error, keyName string) error {
	if ce, ok := err.(*stem.ConfigError); ok {
		c := *ce
		c.Key = keyName
		return &c
	}
	if errors.Is(err, stem.ErrIncompatible) {
		return fmt.Errorf("%s: %w", keyName, err)
	}
	return err
}

// The variables ResolveRevokeURL reads, in order of precedence.
const (
	EnvRevokeStoreURL   = "STEM_REVOKE_STORE_URL"
	EnvResultBackendURL = "STEM_RESULT_BACKEND_URL"
	EnvBrokerURL        = "STEM_BROKER_URL"
)

// ResolveRevokeURL returns the revoke store URL and the variable it came
// from: STEM_REVOKE_STORE_URL, else STEM_RESULT_BACKEND_URL, else
// STEM_BROKER_URL, else config.DefaultBrokerURL (fromKey is then ""). A
// variable set to blanks counts as unset. lookup is os.LookupEnv or a
// config.Lookup's getter.
func ResolveRevokeURL(lookup func(key string) (string, bool)) (url, fromKey string) {
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
