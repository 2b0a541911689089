// Package templating expands the placeholders of stem's path templates
// (pidfiles, logfiles, per-node settings), such as "/var/run/stem/%n.pid".
//
// The placeholders are listed once, in Specifiers (docs/daemon.md's table
// is checked against it); a typo is an error, never kept as a literal.
//
// Expand is a pure function: the caller supplies the host name and the
// invocation's timestamp, so one command expands every node's templates with
// the same %d.
package templating

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TimeLayout is the layout of %d: UTC, second precision, no separators that
// need quoting in a path ("20250102T150405Z").
const TimeLayout = "20060102T150405Z"

// Vars are the values a template is expanded with.
type Vars struct {
	// Node is the node name (%n, %N).
	Node string
	// Hostname is the host name (%h), as os.Hostname returns it.
	Hostname string
	// Index is the node's 1-based position in the command's node list
	// (%i, %I). Zero means "unknown": a template using %i is then an error.
	Index int
	// Time is the invocation's timestamp (%d), taken once per command.
	Time time.Time
}

// Specifier describes one placeholder.
type Specifier struct {
	// Verb is the character after '%'.
	Verb byte
	// Meaning documents the placeholder, as the docs table shows it.
	Meaning string
	// Example is the expansion for ExampleVars.
	Example string
	expand  func(Vars) (string, error)
}

// ExampleVars are the values the Example column of the docs table uses.
var ExampleVars = Vars{Node: "alpha", Hostname: "db1.example.com", Index: 2, Time: time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC)}

// Specifiers is the table of placeholders, in documentation order.
var Specifiers = []Specifier{
	{'n', "node name", "alpha", func(v Vars) (string, error) { return need("%n", "a node name", v.Node) }},
	{'N', "node name, upper-cased", "ALPHA", func(v Vars) (string, error) {
		s, err := need("%N", "a node name", v.Node)
		return strings.ToUpper(s), err
	}},
	{'h', "host name", "db1.example.com", func(v Vars) (string, error) { return need("%h", "a host name", v.Hostname) }},
	{'i', "1-based index of the node in the command's node list", "2", index},
	{'I', "same as %i (kept for compatibility with the service files)", "2", index},
	{'d', "timestamp of the invocation, UTC, " + TimeLayout, "20250102T150405Z", func(v Vars) (string, error) {
		if v.Time.IsZero() {
			return "", fmt.Errorf("%%d needs a timestamp")
		}
		return v.Time.UTC().Format(TimeLayout), nil
	}},
	{'%', "a literal %", "%", func(Vars) (string, error) { return "%", nil }},
}

func need(spec, what, v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("%s needs %s", spec, what)
	}
	return v, nil
}

func index(v Vars) (string, error) {
	if v.Index < 1 {
		return "", fmt.Errorf("%%i needs the node's index in a node list")
	}
	return strconv.Itoa(v.Index), nil
}

// Error is a template that cannot be expanded.
type Error struct {
	// Template is the template as given.
	Template string
	// Column is the 1-based position (in characters) of the offending '%'.
	Column int
	// Msg says what is wrong.
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("template %q, column %d: %s", e.Template, e.Column, e.Msg)
}

// Verbs returns the known specifiers as "%n %N ...", for messages.
func Verbs() string {
	parts := make([]string, len(Specifiers))
	for i, s := range Specifiers {
		parts[i] = "%" + string(s.Verb)
	}
	return strings.Join(parts, " ")
}

// Expand replaces the placeholders of template with v's values. It returns
// an *Error for an unknown specifier, a trailing lone '%', or a placeholder
// whose value v lacks (an empty node name, say).
func Expand(template string, v Vars) (string, error) {
	if !strings.Contains(template, "%") {
		return template, nil
	}
	var b strings.Builder
	runes := []rune(template)
	for i := 0; i < len(runes); i++ {
		r := runes[i]
		if r != '%' {
			b.WriteRune(r)
			continue
		}
		if i+1 == len(runes) {
			return "", &Error{Template: template, Column: i + 1, Msg: "lone % at the end (write %% for a literal %)"}
		}
		i++
		k := slices.IndexFunc(Specifiers, func(s Specifier) bool { return rune(s.Verb) == runes[i] })
		if k < 0 {
			return "", &Error{Template: template, Column: i, Msg: fmt.Sprintf("unknown specifier %%%c (known: %s)", runes[i], Verbs())}
		}
		out, err := Specifiers[k].expand(v)
		if err != nil {
			return "", &Error{Template: template, Column: i, Msg: err.Error()}
		}
		b.WriteString(out)
	}
	return b.String(), nil
}

// Uses reports whether template contains the placeholder %verb (a "%%"
// escape is not a use of '%').
func Uses(template string, verb byte) bool {
	for i := 0; i+1 < len(template); i++ {
		if template[i] == '%' {
			if template[i+1] == verb {
				return true
			}
			i++
		}
	}
	return false
}
