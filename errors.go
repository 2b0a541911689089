// Package stem is the leaf every stem package may import: the errors
// that cross package lines (a backend that does not answer, a store that
// is not stem's, a bad configuration value) and the redaction of secrets
// from URLs, text and errors. It imports nothing of stem's.
package stem

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrUnavailable reports that the broker cannot be reached. Wrap it with
// the redacted URL and the cause.
var ErrUnavailable = errors.New("broker unavailable")

// ErrIncompatible reports a store stem cannot use as configured: a path it
// cannot create or write, a file or schema that belongs to another
// program, a schema newer than this binary, a malformed location. The CLI
// exits 78 (configuration error) on it. Engines mark such errors with
// Incompatible, which keeps their message.
var ErrIncompatible = errors.New("incompatible store")

// Incompatible marks err as an ErrIncompatible without changing its
// message (nil stays nil).
func Incompatible(err error) error {
	if err == nil {
		return nil
	}
	return &incompatibleError{err}
}

type incompatibleError struct{ err error }

func (e *incompatibleError) Error() string   { return e.err.Error() }
func (e *incompatibleError) Unwrap() []error { return []error{e.err, ErrIncompatible} }

// ConfigError is a configuration error: a bad value of a named variable or flag,
// a bad env file, URL or tasks file. The CLI exits 78 on it.
type ConfigError struct {
	// Key is the variable or flag ("STEM_WORKER_CONCURRENCY", "--concurrency")
	// or file ("/etc/stem/stem.env:3") at fault.
	Key string
	// Value is the offending value, already redacted when it is a URL.
	Value string
	// Msg says what is wrong and what is accepted.
	Msg string
}

func (e *ConfigError) Error() string {
	if e.Value == "" && e.Key == "" {
		return e.Msg
	}
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Key, e.Msg)
	}
	return fmt.Sprintf("invalid %s=%q: %s", e.Key, e.Value, e.Msg)
}

// Configf returns a *ConfigError without a key, for messages that name their own
// subject (a file and line, say).
func Configf(format string, args ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// CheckURL reports whether raw parses and has one of the given schemes.
func CheckURL(raw string, schemes []string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %v", unwrapURLErr(err))
	}
	scheme := strings.ToLower(u.Scheme)
	for _, s := range schemes {
		if scheme == s {
			return nil
		}
	}
	if scheme == "" {
		return fmt.Errorf("missing scheme; supported: %s", schemeList(schemes))
	}
	return fmt.Errorf("unsupported scheme %q; supported: %s", scheme, schemeList(schemes))
}

func schemeList(s []string) string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x + "://"
	}
	return strings.Join(out, ", ")
}

func unwrapURLErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
