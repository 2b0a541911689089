// Package logging builds the one logrus logger a stem command uses. Library
// packages never log through package-level logrus functions; they receive a
// logrus.FieldLogger.
//
// Formats: "text" (with timestamps), "json", "journal" (JournalFormatter,
// so `journalctl -p warning` filters correctly), and "auto" (ResolveFormat).
package logging

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/stemhq/stem"
)

// Field names used across stem's log lines.
const (
	FieldWorker   = "worker"
	FieldTask     = "task_id"
	FieldTaskName = "task"
	FieldQueue    = "queue"
	FieldAttempt  = "attempt"
	FieldURL      = "url"
	FieldSignal   = "signal"
	FieldMode     = "mode"
	FieldDelay    = "delay"
	FieldDuration = "duration"
	FieldPID      = "pid"
)

// Options configure New.
type Options struct {
	Level  string // logrus level name; "" = info
	Format string // auto, text, json, journal; "" = auto
	// JournalStream is the value of $JOURNAL_STREAM ("" when not under
	// journald); it decides "auto".
	JournalStream string
}

// New returns a logger writing to w.
func New(w io.Writer, o Options) (*logrus.Logger, error) {
	l := logrus.New()
	l.SetOutput(w)
	lvl := cmp.Or(o.Level, "info")
	level, err := logrus.ParseLevel(lvl)
	if err != nil {
		return nil, fmt.Errorf("log level %q: %w", lvl, err)
	}
	l.SetLevel(level)
	var f logrus.Formatter
	switch ResolveFormat(o.Format, o.JournalStream) {
	case "json":
		f = &logrus.JSONFormatter{}
	case "journal":
		f = &JournalFormatter{}
	default:
		f = &logrus.TextFormatter{FullTimestamp: true, DisableColors: true}
	}
	l.SetFormatter(redacting{f})
	return l, nil
}

// redacting passes the message and every string, error or Stringer field
// of each entry through stem.RedactText before formatting, so no log
// line shows a password, whichever code logged the URL or the driver
// error that quoted it.
type redacting struct{ inner logrus.Formatter }

func (r redacting) Format(e *logrus.Entry) ([]byte, error) {
	c := *e
	c.Message = stem.RedactText(e.Message)
	c.Data = make(logrus.Fields, len(e.Data))
	for k, v := range e.Data {
		c.Data[k] = redactValue(v)
	}
	return r.inner.Format(&c)
}

func redactValue(v any) any {
	var s string
	switch x := v.(type) {
	case string:
		return stem.RedactText(x)
	case error:
		s = x.Error()
	case fmt.Stringer:
		s = x.String()
	default:
		return v
	}
	if clean := stem.RedactText(s); clean != s {
		return clean
	}
	return v
}

// ResolveFormat turns "auto" into "journal" or "text".
func ResolveFormat(format, journalStream string) string {
	switch format {
	case "", "auto":
		if journalStream != "" {
			return "journal"
		}
		return "text"
	}
	return format
}

// Priority returns the sd-daemon priority of a logrus level.
func Priority(l logrus.Level) int {
	switch l {
	case logrus.PanicLevel, logrus.FatalLevel:
		return 2 // crit
	case logrus.ErrorLevel:
		return 3
	case logrus.WarnLevel:
		return 4
	case logrus.InfoLevel:
		return 6
	default:
		return 7
	}
}

// JournalFormatter writes "<N>message key=value ..." without a timestamp.
type JournalFormatter struct{}

// Format implements logrus.Formatter.
func (JournalFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>%s", Priority(e.Level), strings.ReplaceAll(e.Message, "\n", " "))
	for _, k := range slices.Sorted(maps.Keys(e.Data)) {
		v := fmt.Sprint(e.Data[k])
		if strings.ContainsAny(v, " \"=") || v == "" {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// Discard returns a logger that drops everything (tests, library defaults).
func Discard() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}
