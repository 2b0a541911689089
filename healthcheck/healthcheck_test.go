package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem/daemon"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	// A pidfile this test process holds, as a running node does.
	own := filepath.Join(dir, "own.pid")
	pf, err := daemon.CreatePidfile(own, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Remove()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// An unlocked pidfile written an hour ago naming this (live) process:
	// whoever wrote it is gone and the PID now belongs to someone else.
	reused := write("reused.pid", strconv.Itoa(os.Getpid())+"\n")
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(reused, old, old); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, pidfile, code, msg string
	}{
		{"healthy", own, "", ""},
		{"missing", filepath.Join(dir, "none.pid"), CodePidfileMissing, "does not exist"},
		{"garbage", write("garbage.pid", "hello\n"), CodeInvalidPID, "not a PID"},
		{"empty", write("empty.pid", ""), CodeInvalidPID, "empty"},
		{"dead", write("dead.pid", strconv.Itoa(daemon.MaxPID)+"\n"), CodeNotRunning, "not running"},
		{"reused", reused, CodePidReused, "after the pidfile was written"},
		{"directory", dir, CodeInvalidPID, "not a PID"},
	}
	now := time.Now().Add(time.Hour)
	p := Probe{Now: func() time.Time { return now }}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := p.Check(context.Background(), Target{Node: "alpha", Pidfile: tt.pidfile, Logfile: "/var/log/a.log"})
			if r.Node != "alpha" || r.Pidfile != tt.pidfile || r.Logfile != "/var/log/a.log" {
				t.Fatalf("result does not echo the target: %+v", r)
			}
			if tt.code == "" {
				if !r.Healthy() || r.Error != "" || r.PID != os.Getpid() || r.UptimeSeconds == nil || *r.UptimeSeconds < 3600 {
					t.Fatalf("Check = %+v, want healthy with an hour of uptime", r)
				}
				if _, err := time.Parse(time.RFC3339, r.Timestamp); err != nil {
					t.Fatalf("timestamp %q: %v", r.Timestamp, err)
				}
				return
			}
			if r.Healthy() || r.Status != StatusUnhealthy || r.Error != tt.code || !strings.Contains(r.Message, tt.msg) {
				t.Fatalf("Check = %+v, want %s (%q)", r, tt.code, tt.msg)
			}
		})
	}
}

func TestReadinessPlugsIn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	pf, err := daemon.CreatePidfile(path, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Remove()
	var seen Result
	p := Probe{Readiness: func(_ context.Context, r Result) error { seen = r; return errors.New("heartbeat 40s old") }}
	r := p.Check(context.Background(), Target{Pidfile: path})
	if r.Healthy() || r.Error != CodeNotReady || r.Message != "heartbeat 40s old" || seen.PID != os.Getpid() {
		t.Fatalf("Check = %+v (readiness saw %+v)", r, seen)
	}
	p.Readiness = func(context.Context, Result) error { return nil }
	if r := p.Check(context.Background(), Target{Pidfile: path}); !r.Healthy() {
		t.Fatalf("Check = %+v", r)
	}
	called := false
	p.Readiness = func(context.Context, Result) error { called = true; return nil }
	p.Check(context.Background(), Target{Pidfile: path + ".none"})
	if called {
		t.Fatal("readiness ran for a node that is not running")
	}
}

// TestJSONSchema pins the field names of the documented schema.
func TestJSONSchema(t *testing.T) {
	up := int64(42)
	healthy, _ := json.Marshal(Result{Status: StatusHealthy, Node: "a", PID: 7, Pidfile: "/p", Logfile: "/l", Timestamp: "2025-01-02T03:04:05Z", UptimeSeconds: &up})
	want := `{"status":"healthy","node":"a","pid":7,"pidfile":"/p","logfile":"/l","timestamp":"2025-01-02T03:04:05Z","uptimeSeconds":42}`
	if string(healthy) != want {
		t.Fatalf("healthy JSON:\n got %s\nwant %s", healthy, want)
	}
	sick, _ := json.Marshal(Result{Status: StatusUnhealthy, Pidfile: "/p", Error: CodePidfileMissing, Message: "pidfile /p does not exist"})
	want = `{"status":"unhealthy","pidfile":"/p","error":"pidfile-missing","message":"pidfile /p does not exist"}`
	if string(sick) != want {
		t.Fatalf("unhealthy JSON:\n got %s\nwant %s", sick, want)
	}
}

// BenchmarkCheck measures the probe itself (pidfile, lock, /proc), without
// process start-up.
func BenchmarkCheck(b *testing.B) {
	path := filepath.Join(b.TempDir(), "n.pid")
	pf, err := daemon.CreatePidfile(path, os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	defer pf.Remove()
	var p Probe
	for b.Loop() {
		if r := p.Check(context.Background(), Target{Pidfile: path}); !r.Healthy() {
			b.Fatal(r.Message)
		}
	}
}
