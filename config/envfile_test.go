package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stemhq/stem"
)

// TestEnvFileErrors: every malformed line, including those godotenv would
// take silently or report without a line, is a *stem.ConfigError (exit 78) naming
// file:line and what is wrong, and never the value (it may be a password).
func TestEnvFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content string
		line          int
		msg           string
	}{
		{"empty name", "A=1\n=s3cr3t\n", 2, "no variable name before '='"},
		{"name with a space", "A=1\n\nMY KEY=s3cr3t\n", 3, `variable name "MY KEY" contains a space`},
		{"bare export", "A=1\nexport\n", 2, `"export" without a variable name`},
		{"export with empty name", "A=1\nexport =s3cr3t\n", 2, "no variable name before '='"},
		{"no equals sign", "# c\nA=1\ngarbage s3cr3t\nB=2\n", 3, "no '=' in the line"},
		{"bad character", "A=1\nFOO-BAR=s3cr3t\n", 2, `variable name "FOO-BAR"`},
		{"leading digit", "1A=s3cr3t\n", 1, `variable name "1A"`},
		{"unterminated double quote", "A=1\nSTEM_BROKER_URL=\"redis://:s3cr3t@h/0\nC=3\n", 2, "the value of STEM_BROKER_URL opens a double quote that is never closed"},
		{"unterminated single quote", "A=1\nB=2\nP='s3cr3t\n", 3, "the value of P opens a single quote that is never closed"},
		{"escaped quote does not close", "A=\"s3cr3t\\\"\n", 1, "never closed"},
		{"after a multi-line value", "A=\"one\ntwo\"\n=s3cr3t\n", 3, "no variable name"},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".env")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadEnvFile(path)
			var ce *stem.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("case %d: LoadEnvFile = %v, want a *stem.ConfigError", i, err)
			}
			msg := err.Error()
			want := "env file " + path + ":" + string(rune('0'+tt.line)) + ": "
			if !strings.HasPrefix(msg, want) || !strings.Contains(msg, tt.msg) || strings.Contains(msg, "s3cr3t") || strings.Contains(msg, "\n") {
				t.Fatalf("LoadEnvFile = %q, want one line starting %q, saying %q, without the value", msg, want, tt.msg)
			}
		})
	}
}

// TestEnvFileAccepts: what godotenv reads and the scan must not refuse.
func TestEnvFileAccepts(t *testing.T) {
	t.Parallel()
	content := "# comment\n\n  # indented comment\nexport A=1\nB = 2\nC=\"multi\nline\"\nD='x # y'\nE=\"q\\\"uote\"\nF=\nG=1 # trailing\r\nH: yaml\n"
	path := filepath.Join(t.TempDir(), "ok.env")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := LoadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"A": "1", "B": "2", "C": "multi\nline", "D": "x # y", "E": `q"uote`, "F": "", "G": "1", "H": "yaml"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q (all: %q)", k, m[k], v, m)
		}
	}
}

// TestPackagedEnvFileParses: the env file the packages install passes the
// same checks as any other.
func TestPackagedEnvFileParses(t *testing.T) {
	t.Parallel()
	if _, err := LoadEnvFile(filepath.Join("..", "packaging", "stem.env")); err != nil {
		t.Fatal(err)
	}
}
