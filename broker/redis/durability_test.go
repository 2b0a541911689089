package redis

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/internal/testutil"
)

// openWarned opens an Engine on srv and returns the warnings Open gave.
func openWarned(t *testing.T, srv *testutil.RedisServer, opts Options) (*Engine, []error, error) {
	t.Helper()
	var warnings []error
	opts.Warn = func(err error) { warnings = append(warnings, err) }
	e, err := Open(context.Background(), "redis://"+srv.Addr()+"/0", opts)
	if e != nil {
		t.Cleanup(func() { _ = e.Close() })
	}
	return e, warnings, err
}

// TestAOFOffWarns: a server with the stock configuration (no AOF) forgets
// every task in a crash. Open says so, naming the settings to change, and
// Durability reports it not durable.
func TestAOFOffWarns(t *testing.T) {
	srv := startOwnRedisArgs(t, "--appendonly", "no")
	e, warnings, err := openWarned(t, srv, Options{Namespace: "dur"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if len(warnings) != 1 {
		t.Fatalf("warnings = %v, want one", warnings)
	}
	for _, want := range []string{"appendonly no", "appendonly yes", "appendfsync everysec"} {
		if !strings.Contains(warnings[0].Error(), want) {
			t.Errorf("warning %q does not say %q", warnings[0], want)
		}
	}
	d, err := e.Durability(context.Background())
	if err != nil || d.Durable || !strings.Contains(d.Detail, "appendonly no") {
		t.Fatalf("Durability = %+v, %v; want not durable, naming appendonly", d, err)
	}
}

// TestAOFRequiredRefuses: with RequireAOF (STEM_REDIS_REQUIRE_AOF) the same
// server is refused with a one-line configuration error (exit 78).
func TestAOFRequiredRefuses(t *testing.T) {
	srv := startOwnRedisArgs(t, "--appendonly", "no")
	_, warnings, err := openWarned(t, srv, Options{Namespace: "dur", RequireAOF: true})
	if !errors.Is(err, ErrAOFRequired) || !errors.Is(err, stem.ErrIncompatible) {
		t.Fatalf("Open = %v, want ErrAOFRequired (incompatible: exit 78)", err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "appendonly yes") || !strings.Contains(msg, srv.Addr()) {
		t.Fatalf("error %q: want one line naming the server and appendonly yes", msg)
	}
	if len(warnings) != 0 {
		t.Fatalf("refused and warned: %v", warnings)
	}
}

// TestAOFOnIsSilent: with appendonly yes Open says nothing, even with
// RequireAOF, and Durability reports the fsync policy.
func TestAOFOnIsSilent(t *testing.T) {
	srv := startOwnRedisArgs(t, "--appendonly", "yes", "--appendfsync", "everysec")
	e, warnings, err := openWarned(t, srv, Options{Namespace: "dur", RequireAOF: true})
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Open = %v, warnings %v; want silence", err, warnings)
	}
	d, err := e.Durability(context.Background())
	if err != nil || !d.Durable || d.Detail != "appendonly yes, appendfsync everysec" {
		t.Fatalf("Durability = %+v, %v", d, err)
	}
}

func TestRedisDurabilityJudgement(t *testing.T) {
	tests := []struct {
		aof     bool
		fsync   string
		durable bool
		detail  string
	}{
		{false, "everysec", false, "appendonly no"},
		{true, "no", false, "appendfsync no"},
		{true, "always", true, "appendfsync always"},
		{true, "everysec", true, "appendfsync everysec"},
		{true, "", true, "not readable"},
	}
	for _, tt := range tests {
		d := redisDurability(tt.aof, tt.fsync)
		if d.Durable != tt.durable || !strings.Contains(d.Detail, tt.detail) {
			t.Errorf("redisDurability(%v, %q) = %+v", tt.aof, tt.fsync, d)
		}
	}
}

// TestEvictingServerIsNotDurable: an allkeys-* eviction policy with a
// maxmemory set drops tasks under memory pressure, AOF or not.
func TestEvictingServerIsNotDurable(t *testing.T) {
	conformance.RequireEnv(t, testURLEnv)
	t.Parallel()
	srv := startOwnRedisArgs(t, "--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")
	e, err := Open(context.Background(), "redis://"+srv.Addr()+"/0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	d, err := e.Durability(context.Background())
	if err != nil || d.Durable || !strings.Contains(d.Detail, "maxmemory-policy allkeys-lru") || !strings.Contains(d.Detail, "noeviction") {
		t.Fatalf("Durability = %+v, %v; want not durable, naming the policy", d, err)
	}
}
