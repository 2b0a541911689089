package broker

import "net/url"

// RedactURL returns raw with any password replaced by "xxxxx", for logs and
// error messages. A string that does not parse as a URL is returned as is.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); !ok {
		return raw
	}
	return u.Redacted()
}
