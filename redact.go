package stem

import (
	"net/url"
	"regexp"
	"strings"
)

// Redacted replaces every secret in what RedactURL, RedactText and
// RedactError return.
const Redacted = "xxxxx"

// secretKey matches the name of a parameter that holds a secret: a
// password in any spelling (password, sslpassword, passwd, pwd), a
// passfile (its path says where the password is, so it is hidden too), a
// token, a secret, an API or private key. Matching is case-insensitive
// and loose on purpose: hiding a harmless value costs nothing, showing a
// password costs a rotation. sslkey, sslcert and sslrootcert are paths to
// files the server or client reads and are shown.
var secretKey = regexp.MustCompile(`(?i)pass|pwd|secret|token|credential|api_?key|private_?key|signing_?key`)

// kvSecret finds key=value pairs whose key is a secret parameter, in a
// libpq keyword/value connection string ("host=h password='a b'"), a query
// string or free text. The value is a single- or double-quoted string
// (with backslash escapes) or runs to the next space, '&', ';', ',' or
// quote.
var kvSecret = regexp.MustCompile(`(?i)([A-Za-z0-9_.-]*(?:pass|pwd|secret|token|credential|api_?key|private_?key|signing_?key)[A-Za-z0-9_.-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;,'"` + "`" + `]*)`)

// urlInText finds URLs inside free text. It stops at whitespace and
// quotes; trailing punctuation is trimmed before redaction.
var urlInText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>` + "`" + `]+`)

// RedactURL returns raw, a URL or a libpq keyword/value connection string,
// with every secret replaced by "xxxxx", for logs, errors and --json
// output. It is the one redactor of stem: every URL or DSN that reaches a
// person goes through it (or through RedactText and RedactError, which
// use it). It hides
//
//   - the password of the user info (scheme://user:secret@host),
//   - the value of every query parameter whose name, percent-decoded and
//     in any case, says password, passfile, secret, token or key
//     (?password=, ?sslpassword=, ?PassWord=, ?pass%77ord=),
//   - the same keys in a keyword/value string (host=h password=secret).
//
// A string with "://" that does not parse as a URL but holds an '@' or a
// secret key is shown only up to its scheme, since where its secret ends
// cannot be known. Anything else is returned unchanged.
func RedactURL(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		// "scheme:user:secret@host" parses as an opaque URL.
		if u, err := url.Parse(raw); err == nil && u.Scheme != "" && strings.Contains(u.Opaque, "@") {
			return u.Scheme + ":<unparsable URL with credentials>"
		}
		return redactKV(raw)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		rest := raw[i:]
		if strings.Contains(rest, "@") || secretKey.MatchString(rest) {
			return raw[:i] + "://<unparsable URL with credentials>"
		}
		return raw
	}
	changed := false
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Redacted)
			changed = true
		}
	}
	if q, ok := redactQuery(u.RawQuery); ok {
		u.RawQuery, changed = q, true
	}
	if u.Fragment != "" && secretKey.MatchString(u.Fragment) {
		u.Fragment, u.RawFragment, changed = Redacted, "", true
	}
	if !changed {
		return raw
	}
	return u.String()
}

// redactQuery hides the values of secret parameters in a raw query,
// keeping the order and spelling of everything else. ok says whether
// anything was hidden.
func redactQuery(raw string) (string, bool) {
	if raw == "" {
		return raw, false
	}
	parts := strings.Split(raw, "&")
	changed := false
	for i, p := range parts {
		k, _, hasValue := strings.Cut(p, "=")
		name := k
		if dk, err := url.QueryUnescape(k); err == nil {
			name = dk
		}
		if hasValue && secretKey.MatchString(name) {
			parts[i] = k + "=" + Redacted
			changed = true
		}
	}
	return strings.Join(parts, "&"), changed
}

// redactKV hides secret values in keyword/value text.
func redactKV(s string) string {
	if !strings.Contains(s, "=") {
		return s
	}
	return kvSecret.ReplaceAllString(s, "${1}${2}"+Redacted)
}

// HasSecret reports whether raw (a URL, a keyword/value connection string)
// holds something RedactURL hides.
func HasSecret(raw string) bool { return RedactURL(raw) != raw }

// RedactText returns s, free text such as an error message from a driver
// or a log line, with every URL in it passed through RedactURL and every
// secret key=value pair hidden.
func RedactText(s string) string {
	if !strings.Contains(s, "=") && !strings.Contains(s, "://") {
		return s
	}
	var b strings.Builder
	last := 0
	for _, m := range urlInText.FindAllStringIndex(s, -1) {
		if m[0] < last {
			continue // inside user info already hidden below
		}
		b.WriteString(redactKV(s[last:m[0]]))
		if at := brokenUserInfo(s, m); at > 0 {
			// The URL's user info holds a quote or a space, where the
			// match stopped: hide everything up to its '@'.
			scheme, _, _ := strings.Cut(s[m[0]:m[1]], "://")
			b.WriteString(scheme + "://xxxxx@")
			last = at + 1
			continue
		}
		u := s[m[0]:m[1]]
		if isTemplate(u) {
			b.WriteString(u)
			last = m[1]
			continue
		}
		trimmed := strings.TrimRight(u, ".,;:)]}")
		b.WriteString(RedactURL(trimmed))
		b.WriteString(u[len(trimmed):])
		last = m[1]
	}
	b.WriteString(redactKV(s[last:]))
	return b.String()
}

// brokenUserInfoSpan bounds how far past a URL match stopped at a quote or
// a space brokenUserInfo looks for the '@' that ends a user info.
const brokenUserInfoSpan = 64

// brokenUserInfo returns the index in s of the '@' that ends the user info
// of the URL matched at m, when the match stopped inside it: at a quote or
// a space (legal in a password, or left unencoded), with no '@' and no '/'
// after "://" yet, but "user:" seen, and an '@' within
// brokenUserInfoSpan bytes further on, before any '/' or another "://".
// Otherwise it returns -1. Over-hiding ordinary text is the price of
// never printing such a password.
func brokenUserInfo(s string, m []int) int {
	if m[1] >= len(s) || !strings.ContainsRune("'\"` \t", rune(s[m[1]])) {
		return -1
	}
	_, auth, _ := strings.Cut(s[m[0]:m[1]], "://")
	if strings.ContainsAny(auth, "@/") || !strings.Contains(auth, ":") {
		return -1
	}
	rest := s[m[1]:min(len(s), m[1]+brokenUserInfoSpan)]
	at := strings.IndexByte(rest, '@')
	if at < 0 || strings.ContainsAny(rest[:at], "/\n") || strings.Contains(rest[:at], "://") {
		return -1
	}
	return m[1] + at
}

// isTemplate reports whether u is the syntax of a URL as messages
// document it, "redis://[user:password@]host:port/db": optional parts in
// brackets, which no real URL has in its user info.
func isTemplate(u string) bool {
	_, rest, _ := strings.Cut(u, "://")
	return strings.HasPrefix(rest, "[") && (strings.Contains(rest, "@]") || strings.Contains(rest, "]@"))
}

// RedactError returns err with its message passed through RedactText and
// every literal secret of the given URLs (their passwords and secret
// parameter values, raw and percent-decoded) replaced, for driver errors
// that may quote a password however they like. errors.Is and errors.As
// still see err. A nil err stays nil; an err that shows nothing secret is
// returned as is.
func RedactError(err error, urls ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := msg
	for _, raw := range urls {
		for _, s := range secretValues(raw) {
			clean = strings.ReplaceAll(clean, s, Redacted)
		}
	}
	clean = RedactText(clean)
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// minLiteralSecret is the shortest secret RedactError replaces wherever it
// appears in a message: shorter ones would mangle ordinary words, and are
// no secret anyway.
const minLiteralSecret = 4

// secretValues returns the secrets of raw: the user-info password and the
// values of secret parameters, each raw and decoded.
func secretValues(raw string) []string {
	var out []string
	add := func(vs ...string) {
		for _, v := range vs {
			v = strings.Trim(v, `'"`)
			if len(v) >= minLiteralSecret && v != Redacted {
				out = append(out, v)
			}
		}
	}
	if i := strings.Index(raw, "://"); i >= 0 {
		rest := raw[i+3:]
		if at := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
				dec, _ := url.PathUnescape(pw)
				add(pw, dec)
			}
		}
		if _, q, ok := strings.Cut(rest, "?"); ok {
			for _, p := range strings.Split(q, "&") {
				k, v, _ := strings.Cut(p, "=")
				if dk, err := url.QueryUnescape(k); err == nil {
					k = dk
				}
				if secretKey.MatchString(k) {
					dec, _ := url.QueryUnescape(v)
					add(v, dec)
				}
			}
		}
		return out
	}
	for _, m := range kvSecret.FindAllStringSubmatch(raw, -1) {
		add(m[3])
	}
	return out
}
