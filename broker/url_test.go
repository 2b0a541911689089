package broker

import (
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
	}
	for _, tt := range tests {
		got := RedactURL(tt.in)
		if got != tt.want || strings.Contains(got, "hunter2") || strings.Contains(got, "zzter") {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
