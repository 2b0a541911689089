package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/joho/godotenv"
	"github.com/stemhq/stem"
)

// LoadEnvFile parses an env file (godotenv syntax, which systemd's
// EnvironmentFile= also reads for the lines stem writes). Every error is a
// *Error naming the file and line as "env file PATH:LINE: ..." and never
// shows a value, which may be a password. A missing file is an error too.
//
// godotenv accepts some lines silently that are mistakes (an empty name in
// "=value", a name with a space, a bare "export") and reports others
// without a line (an unterminated quote, quoting the value); a scan of the
// file before godotenv finds them all, with their line.
func LoadEnvFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &stem.ConfigError{Key: "env file " + path, Msg: err.Error()}
	}
	if line, msg := ScanEnvFile(data); line > 0 {
		return nil, &stem.ConfigError{Key: fmt.Sprintf("env file %s:%d", path, line), Msg: msg}
	}
	m, err := godotenv.Parse(bytes.NewReader(data))
	if err != nil {
		// The scan should have caught it; name what can be named.
		return nil, &stem.ConfigError{Key: "env file " + path, Msg: envParseError(err)}
	}
	return m, nil
}

// envName is a variable name: what systemd and POSIX shells accept.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ScanEnvFile checks the lines of an env file and returns the 1-based line
// of the first mistake and what is wrong, or 0 and "" when every line is a
// blank, a comment or a [export] NAME=value assignment whose quotes are
// closed (a quoted value may span lines). Messages name variables, never
// values.
func ScanEnvFile(data []byte) (line int, msg string) {
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		text := strings.TrimSpace(strings.TrimSuffix(lines[i], "\r"))
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if text == "export" {
			return n, `"export" without a variable name: want export NAME=value`
		}
		if rest, ok := strings.CutPrefix(text, "export"); ok && (rest[0] == ' ' || rest[0] == '\t') {
			text = strings.TrimSpace(rest)
		}
		sep := strings.IndexAny(text, "=:")
		if sep < 0 {
			return n, fmt.Sprintf("no '=' in the line: want NAME=value (a line of %d characters, not shown)", len(text))
		}
		name := strings.TrimSpace(text[:sep])
		switch {
		case name == "":
			return n, "no variable name before '=': want NAME=value"
		case strings.ContainsAny(name, " \t"):
			return n, fmt.Sprintf("variable name %q contains a space: want NAME=value, the name made of letters, digits and '_'", name)
		case !envName.MatchString(name):
			return n, fmt.Sprintf("variable name %q: use letters, digits and '_' only, not starting with a digit", name)
		}
		value := strings.TrimLeft(text[sep+1:], " \t")
		if value == "" || (value[0] != '"' && value[0] != '\'') {
			continue
		}
		// A quoted value: find its closing quote, maybe lines later.
		q, rest := value[0], value[1:]
		for closingQuote(rest, q) < 0 {
			if i+1 >= len(lines) {
				return n, fmt.Sprintf("the value of %s opens a %s quote that is never closed", name, map[byte]string{'"': "double", '\'': "single"}[q])
			}
			i++
			rest = strings.TrimSuffix(lines[i], "\r")
		}
	}
	return 0, ""
}

// closingQuote returns the index of the quote q that ends s, or -1. In a
// double-quoted value a backslash escapes the next character.
func closingQuote(s string, q byte) int {
	for j := 0; j < len(s); j++ {
		switch {
		case q == '"' && s[j] == '\\':
			j++
		case s[j] == q:
			return j
		}
	}
	return -1
}

// envParseError shortens godotenv's message to what precedes its quote of
// the file, which may hold a value: `unexpected character "-" in variable
// name near "..."` and `unterminated quoted value "...`.
func envParseError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, " near "); i > 0 {
		msg = msg[:i]
	} else if rest, ok := strings.CutPrefix(msg, "unterminated quoted value"); ok && rest != "" {
		msg = "unterminated quoted value"
	}
	return msg + " (the text is not shown: it may hold a secret)"
}
