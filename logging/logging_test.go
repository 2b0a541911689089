package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestJournalFormat(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, Options{Format: "auto", JournalStream: "8:1234", Level: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	l.WithError(errors.New("boom now")).WithField(FieldTask, "t1").Error("task failed")
	l.Warn("careful")
	l.Info("hello\nworld")
	l.Debug("details")
	want := "<3>task failed error=\"boom now\" task_id=t1\n<4>careful\n<6>hello world\n<7>details\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestFormats(t *testing.T) {
	var b bytes.Buffer
	l, _ := New(&b, Options{Format: "json"})
	l.WithField(FieldQueue, "q").Info("x")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["queue"] != "q" || m["msg"] != "x" {
		t.Fatalf("json line %q: %v", b.String(), err)
	}
	b.Reset()
	l, _ = New(&b, Options{Format: "auto"})
	l.Info("y")
	if !strings.Contains(b.String(), "time=") || strings.HasPrefix(b.String(), "<") {
		t.Fatalf("text line %q", b.String())
	}
	if _, err := New(&b, Options{Level: "loud"}); err == nil {
		t.Fatal("bad level accepted")
	}
	if got := ResolveFormat("auto", ""); got != "text" {
		t.Fatal(got)
	}
}

// TestNoPasswordInLogLines checks that a URL or driver error with a
// password, logged as the message, a field or an error, never shows the
// password in any format.
func TestNoPasswordInLogLines(t *testing.T) {
	for _, format := range []string{"text", "json", "journal"} {
		var b bytes.Buffer
		l, err := New(&b, Options{Format: format})
		if err != nil {
			t.Fatal(err)
		}
		l.WithField(FieldURL, "postgres://u@h/db?sslmode=disable&password=s3cr3t").
			WithError(errors.New("connect to redis://:s3cr3t@h:6379/0: refused")).
			Warn("cannot open postgres://u:s3cr3t@h/db or host=h password=s3cr3t")
		out := b.String()
		if strings.Contains(out, "s3cr3t") || !strings.Contains(out, "xxxxx") {
			t.Errorf("%s: log line shows the password or redacts nothing:\n%s", format, out)
		}
	}
}
