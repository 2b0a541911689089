package postgres

import (
	"strings"
	"testing"
)

func TestPostgresDurabilityJudgement(t *testing.T) {
	tests := []struct {
		fsync, syncCommit string
		durable           bool
		detail            string
	}{
		{"on", "on", true, "fsync=on, synchronous_commit=on"},
		{"on", "local", true, "synchronous_commit=local"},
		{"off", "on", false, "set fsync = on"},
		{"on", "off", false, "set synchronous_commit = on"},
	}
	for _, tt := range tests {
		d := postgresDurability(tt.fsync, tt.syncCommit)
		if d.Durable != tt.durable || !strings.Contains(d.Detail, tt.detail) {
			t.Errorf("postgresDurability(%q, %q) = %+v", tt.fsync, tt.syncCommit, d)
		}
	}
}
