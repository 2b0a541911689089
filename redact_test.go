package stem

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redis://:hunter2@h:6379/0", "redis://:xxxxx@h:6379/0"},
		{"postgres://u:hunter2@h/db?sslmode=disable", "postgres://u:xxxxx@h/db?sslmode=disable"},
		{"redis://h:6379/0", "redis://h:6379/0"},
		{"redis://u:hun%zzter2@h/0", "redis://<unparsable URL with credentials>"},
		{"/var/lib/stem/revokes", "/var/lib/stem/revokes"},
		{"sqlite:///var/lib/stem/stem.db", "sqlite:///var/lib/stem/stem.db"},
		// Query parameters, in any case and spelling, order kept.
		{"postgres://u@h/db?password=hunter2", "postgres://u@h/db?password=xxxxx"},
		{"postgres://u@h/db?sslmode=require&PassWord=hunter2&connect_timeout=5", "postgres://u@h/db?sslmode=require&PassWord=xxxxx&connect_timeout=5"},
		{"postgres://u@h/db?sslpassword=hunter2&sslkey=/etc/stem/client.key", "postgres://u@h/db?sslpassword=xxxxx&sslkey=/etc/stem/client.key"},
		{"postgres://u@h/db?passfile=/etc/stem/hunter2.pgpass", "postgres://u@h/db?passfile=xxxxx"},
		{"postgres://u@h/db?pass%77ord=hunter2", "postgres://u@h/db?pass%77ord=xxxxx"},
		{"postgresql://u:hunter2@h/db?password=hunter2", "postgresql://u:xxxxx@h/db?password=xxxxx"},
		{"rediss://default:hunter2@h:6380/0?dial_timeout=3s", "rediss://default:xxxxx@h:6380/0?dial_timeout=3s"},
		{"postgres://h/db?sslrootcert=/etc/ssl/ca.pem&sslcert=/etc/ssl/c.pem", "postgres://h/db?sslrootcert=/etc/ssl/ca.pem&sslcert=/etc/ssl/c.pem"},
		// Unparsable URLs with a secret somewhere are not shown.
		{"postgres://h/db?password=hun%zzter2", "postgres://h/db?password=xxxxx"},
		{"postgres://u:p@h/db%zz?password=hunter2", "postgres://<unparsable URL with credentials>"},
		{"postgres:u:hunter2@h/db", "postgres:<unparsable URL with credentials>"},
		// libpq keyword/value strings.
		{"host=h password=hunter2 dbname=stem", "host=h password=xxxxx dbname=stem"},
		{"host=h password='hun ter2' sslpassword=hunter2", "host=h password=xxxxx sslpassword=xxxxx"},
		{"host=h PASSWORD = hunter2", "host=h PASSWORD = xxxxx"},
		{"host=h user=u", "host=h user=u"},
	}
	for _, tt := range tests {
		got := RedactURL(tt.in)
		if got != tt.want || strings.Contains(got, "hunter2") || strings.Contains(got, "zzter") || strings.Contains(got, "ter2") {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if HasSecret(tt.in) != (tt.in != tt.want) {
			t.Errorf("HasSecret(%q) = %v", tt.in, HasSecret(tt.in))
		}
	}
}

func TestRedactText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres engine at postgres://u@h/db?password=hunter2: connect: refused", "postgres engine at postgres://u@h/db?password=xxxxx: connect: refused"},
		{`cannot parse "postgres://u:hunter2@h/db" (bad port)`, `cannot parse "postgres://u:xxxxx@h/db" (bad port)`},
		{"failed to connect to `host=h user=u password=hunter2 database=d`", "failed to connect to `host=h user=u password=xxxxx database=d`"},
		{"dial redis://:hunter2@h:1/0, then postgres://v:hunter2@g/db.", "dial redis://:xxxxx@h:1/0, then postgres://v:xxxxx@g/db."},
		{"FATAL: password authentication failed for user \"u\"", "FATAL: password authentication failed for user \"u\""},
		{"STEM_CONTROL_SIGNING_KEY=hunter2", "STEM_CONTROL_SIGNING_KEY=xxxxx"},
		{"no secret here: a=b c://d", "no secret here: a=b c://d"},
		{"bad URL (want redis://[user:password@]host:port/db or postgres://[user[:password]@]host/db)", "bad URL (want redis://[user:password@]host:port/db or postgres://[user[:password]@]host/db)"},
	}
	for _, tt := range tests {
		if got := RedactText(tt.in); got != tt.want {
			t.Errorf("RedactText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactError(t *testing.T) {
	base := errors.New("server said: bad credentials for hunter2 and hunt%3Dr2")
	wrapped := fmt.Errorf("open: %w: %w", ErrUnavailable, base)
	for _, raw := range []string{"postgres://u:hunter2@h/db", "postgres://u@h/db?password=hunter2", "host=h password=hunter2"} {
		err := RedactError(wrapped, raw)
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("RedactError(_, %q) = %q: shows the password", raw, err)
		}
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, base) {
			t.Errorf("RedactError(_, %q) lost the wrapped errors", raw)
		}
	}
	// A decoded password is found too.
	if err := RedactError(base, "postgres://u:hunt%3Dr2@h/db"); strings.Contains(err.Error(), "hunt=r2") || strings.Contains(err.Error(), "hunt%3Dr2") {
		t.Errorf("decoded password shown: %q", err)
	}
	plain := errors.New("connection refused")
	if RedactError(plain, "postgres://u:hunter2@h/db") != plain {
		t.Error("an error showing no secret should be returned as is")
	}
	if RedactError(nil, "x") != nil {
		t.Error("RedactError(nil) != nil")
	}
}

// TestRedactTextUserInfoWithQuoteOrSpace: a password holding a quote (legal
// in a URL) or an unencoded space stops the URL match inside the user info;
// the rest up to the '@' is hidden all the same.
func TestRedactTextUserInfoWithQuoteOrSpace(t *testing.T) {
	for _, in := range []string{
		`dial redis://u:pa'ss@h:6379/0: refused`,
		`dial redis://u:pa"ss@h:6379/0: refused`,
		`parse "redis://u:se cret@h": invalid character " " in userinfo`,
		"open postgres://app:pa ss'w@db/x failed",
	} {
		out := RedactText(in)
		for _, secret := range []string{"pa'ss", `pa"ss`, "se cret", "cret", "pa ss'w", "ss'w"} {
			if strings.Contains(in, secret) && strings.Contains(out, secret) {
				t.Errorf("RedactText(%q) = %q: shows %q", in, out, secret)
			}
		}
		if !strings.Contains(out, "xxxxx@") {
			t.Errorf("RedactText(%q) = %q: no redacted user info", in, out)
		}
	}
	// Ordinary text keeps its words.
	for _, in := range []string{
		`connect to "redis://h:6379/0" failed`,
		`see http://example.com/x and write to a@b`,
	} {
		if out := RedactText(in); out != in {
			t.Errorf("RedactText(%q) = %q, want it unchanged", in, out)
		}
	}
}
