package broker

import (
	"net/url"
	"strings"
)

// RedactURL returns raw with any password replaced by "xxxxx", for logs and
// error messages. A string that does not parse as a URL but looks like it
// carries credentials ("scheme://user:secret@...") is shown only up to its
// scheme, so a malformed password is never printed.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.Index(raw, "://"); i >= 0 && strings.Contains(raw[i:], "@") {
			return raw[:i] + "://<unparsable URL with credentials>"
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); !ok {
		return raw
	}
	return u.Redacted()
}
