package diagnose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/daemon"
)

// find returns the check named name, failing the test if it is absent.
func find(t *testing.T, r Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %s check in %+v", name, r.Checks)
	return Check{}
}

func loadEnv(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("env file %s: line %d: no =", path, i+1)
		}
		m[k] = v
	}
	return m, nil
}

func noEnv(string) (string, bool) { return "", false }

func TestDirectories(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, pidfile string
		level         Level
		msg           string
	}{
		{"exists", filepath.Join(dir, "a.pid"), Info, "exists and is writable"},
		{"creatable", filepath.Join(dir, "x/y/a.pid"), Warning, "will create it"},
		{"under a file", filepath.Join(file, "sub/a.pid"), Error, "is not a directory"},
		{"is a file", filepath.Join(file, "a.pid"), Error, "is not a directory"},
		{"under /dev/null", "/dev/null/stem/a.pid", Error, "cannot be created"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Input{Pidfile: tt.pidfile, Logfile: tt.pidfile + ".log", Getenv: noEnv})
			for _, name := range []string{CheckPidDir, CheckLogDir} {
				c := find(t, r, name)
				if c.Level != tt.level || !strings.Contains(c.Message, tt.msg) || !strings.Contains(c.Message, filepath.Dir(tt.pidfile)) {
					t.Fatalf("%s = %+v, want %s %q", name, c, tt.level, tt.msg)
				}
			}
		})
	}
}

func TestPidfileChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	running := filepath.Join(dir, "running.pid")
	pf, err := daemon.CreatePidfile(running, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Remove()
	reused := write("reused.pid", strconv.Itoa(os.Getpid()))
	old := time.Now().Add(-time.Hour)
	_ = os.Chtimes(reused, old, old)
	tests := []struct {
		name, path        string
		pidLevel, procLvl Level
		pidMsg, procMsg   string
		noProcessCheck    bool
	}{
		{"missing", filepath.Join(dir, "none.pid"), Info, "", "not running", "", true},
		{"garbage", write("garbage.pid", "zzz"), Error, "", "not a PID", "", true},
		{"empty", write("empty.pid", ""), Error, "", "is empty", "", true},
		{"stale", write("stale.pid", strconv.Itoa(daemon.MaxPID)), Info, Warning, "names PID", "stale pidfile", false},
		{"reused", reused, Info, Error, "not locked", "reused", false},
		{"running", running, Info, Info, "locked", "is the node", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Input{Pidfile: tt.path, Getenv: noEnv})
			c := find(t, r, CheckPidfile)
			if c.Level != tt.pidLevel || !strings.Contains(c.Message, tt.pidMsg) {
				t.Fatalf("pidfile check = %+v", c)
			}
			has := slices.ContainsFunc(r.Checks, func(c Check) bool { return c.Name == CheckProcess })
			if tt.noProcessCheck {
				if has {
					t.Fatalf("unexpected process check: %+v", r.Checks)
				}
				return
			}
			c = find(t, r, CheckProcess)
			if c.Level != tt.procLvl || !strings.Contains(c.Message, tt.procMsg) {
				t.Fatalf("process check = %+v", c)
			}
		})
	}
}

func TestEnvFileChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path  string
		level       Level
		msg         string
		secretLevel Level
		secretMsg   string
	}{
		{"none", "", Info, "no env file", "", ""},
		{"syntax error", write("bad.env", "A=1\nBROKEN\n", 0o600), Error, "line 2", "", ""},
		{"missing", filepath.Join(dir, "none.env"), Error, "none.env", "", ""},
		{"password world-readable", write("pw.env", "STEM_BROKER_URL=redis://:hunter2@db:6379/0\n", 0o644), Info, "1 variables", Warning, "STEM_BROKER_URL"},
		{"signing key world-readable", write("key.env", "STEM_SIGNING_KEY=abc\nX=1\n", 0o604), Info, "2 variables", Warning, "chmod o-r"},
		{"secret kept private", write("ok.env", "STEM_SIGNING_KEY=abc\n", 0o640), Info, "parses", Info, "not readable by others"},
		{"no secret", write("plain.env", "STEM_BROKER_URL=redis://db:6379/0\n", 0o644), Info, "parses", Info, "no secrets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Input{EnvFile: tt.path, LoadEnvFile: loadEnv, Getenv: noEnv})
			c := find(t, r, CheckEnvFile)
			if c.Level != tt.level || !strings.Contains(c.Message, tt.msg) {
				t.Fatalf("env-file = %+v, want %s %q", c, tt.level, tt.msg)
			}
			if tt.secretLevel == "" {
				return
			}
			c = find(t, r, CheckEnvSecrets)
			if c.Level != tt.secretLevel || !strings.Contains(c.Message, tt.secretMsg) || strings.Contains(c.Message, "hunter2") {
				t.Fatalf("env-file-permissions = %+v, want %s %q", c, tt.secretLevel, tt.secretMsg)
			}
		})
	}
}

func TestSecrets(t *testing.T) {
	got := Secrets(map[string]string{
		"STEM_BROKER_URL":         "redis://user:pw@h/0",
		"STEM_RESULT_BACKEND_URL": "redis://user@h/0",
		"STEM_REVOKE_STORE_URL":   "postgres://u@h/db?sslmode=require&sslpassword=pw",
		"PG_URL":                  "postgres://u@h/db?PassWord=pw",
		"PG_DSN":                  "host=h password=pw",
		"DB_PASSWORD":             "x",
		"GITHUB_TOKEN":            "x",
		"EMPTY_SECRET":            "",
		"PLAIN":                   "value",
	})
	want := []string{"DB_PASSWORD", "GITHUB_TOKEN", "PG_DSN", "PG_URL", "STEM_BROKER_URL", "STEM_REVOKE_STORE_URL"}
	if !slices.Equal(got, want) {
		t.Fatalf("Secrets = %v, want %v", got, want)
	}
}

func TestCommandAndBroker(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "worker.sh")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExe := filepath.Join(dir, "data.txt")
	if err := os.WriteFile(notExe, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	checkURL := func(raw string) error {
		if !strings.HasPrefix(raw, "redis://") && !strings.HasPrefix(raw, "memory://") {
			return errors.New("unsupported scheme")
		}
		return nil
	}
	redact := func(raw string) string { return strings.Replace(raw, "secret", "xxxxx", 1) }
	tests := []struct {
		name      string
		env       map[string]string
		connect   func(context.Context, string) (*broker.Durability, error)
		cmdLevel  Level
		cmdMsg    string
		urlLevel  Level
		urlMsg    string
		connLevel Level
	}{
		{"defaults", nil, nil, Info, "is not set", Info, "default broker URL redis://127.0.0.1", ""},
		{"executable", map[string]string{"STEM_WORKER_COMMAND": exe + " --flag"}, nil, Info, exe, Info, "well-formed", ""},
		{"not executable", map[string]string{"STEM_WORKER_COMMAND": notExe}, nil, Error, "not an executable", Info, "", ""},
		{"missing", map[string]string{"STEM_WORKER_COMMAND": "/nonexistent/stem-worker"}, nil, Error, "/nonexistent/stem-worker", Info, "", ""},
		{"unbalanced quotes", map[string]string{"STEM_WORKER_COMMAND": `stem "worker run`}, nil, Error, "does not parse", Info, "", ""},
		{"bad URL", map[string]string{"STEM_BROKER_URL": "amqp://secret@h"}, nil, Info, "", Error, "unsupported scheme", ""},
		{"password redacted", map[string]string{"STEM_BROKER_URL": "redis://:secret@h/0"}, nil, Info, "", Info, "xxxxx", ""},
		{"connect fails", map[string]string{"STEM_BROKER_URL": "redis://h/0"}, func(context.Context, string) (*broker.Durability, error) { return nil, errors.New("refused") }, Info, "", Info, "", Error},
		{"connect works", map[string]string{"STEM_BROKER_URL": "memory://"}, func(context.Context, string) (*broker.Durability, error) {
			return &broker.Durability{Durable: true, Detail: "appendonly yes"}, nil
		}, Info, "", Info, "", Info},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{
				Getenv:           func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok },
				DefaultBrokerURL: "redis://127.0.0.1:6379/0",
				CheckBrokerURL:   checkURL,
				RedactURL:        redact,
				Connect:          tt.connect,
			}
			r := Run(context.Background(), in)
			c := find(t, r, CheckCommand)
			if c.Level != tt.cmdLevel || !strings.Contains(c.Message, tt.cmdMsg) {
				t.Fatalf("worker-command = %+v", c)
			}
			c = find(t, r, CheckBrokerURL)
			if c.Level != tt.urlLevel || !strings.Contains(c.Message, tt.urlMsg) || strings.Contains(c.Message, "secret") {
				t.Fatalf("broker-url = %+v", c)
			}
			if tt.connLevel != "" {
				if c := find(t, r, CheckBrokerReach); c.Level != tt.connLevel {
					t.Fatalf("broker-connection = %+v", c)
				}
			}
		})
	}
}

// TestProcessEnvWinsOverEnvFile: a variable set in both places is taken
// from the process environment.
func TestProcessEnvWinsOverEnvFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stem.env")
	if err := os.WriteFile(path, []byte("STEM_BROKER_URL=amqp://bad\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := Input{EnvFile: path, LoadEnvFile: loadEnv, CheckBrokerURL: func(raw string) error {
		if raw != "redis://good/0" {
			return errors.New("wrong URL " + raw)
		}
		return nil
	}, Getenv: func(k string) (string, bool) {
		if k == "STEM_BROKER_URL" {
			return "redis://good/0", true
		}
		return "", false
	}}
	if c := find(t, Run(context.Background(), in), CheckBrokerURL); c.Level != Info {
		t.Fatalf("broker-url = %+v: the env file won over the environment", c)
	}
}

func TestReportCountsAndJSON(t *testing.T) {
	var r Report
	r.add("a", Info, "fine")
	r.add("b", Warning, "hmm")
	r.add("c", Error, "bad %d", 1)
	if r.Errors != 1 || r.Warnings != 1 {
		t.Fatalf("counts = %d errors, %d warnings", r.Errors, r.Warnings)
	}
	data, _ := json.Marshal(r)
	want := `{"checks":[{"name":"a","level":"info","message":"fine"},{"name":"b","level":"warning","message":"hmm"},{"name":"c","level":"error","message":"bad 1"}],"errors":1,"warnings":1}`
	if string(data) != want {
		t.Fatalf("JSON:\n got %s\nwant %s", data, want)
	}
	for l, tag := range map[Level]string{Info: "[OK]", Warning: "[WARN]", Error: "[ERR]"} {
		if l.Tag() != tag {
			t.Errorf("%s.Tag() = %s", l, l.Tag())
		}
	}
}

// TestEnvironmentSecrets: a STEM_* variable of the process environment that
// holds a password is named, never shown, with a recommendation; other
// variables are none of stem's business.
func TestEnvironmentSecrets(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		level   Level
		msg     string
	}{
		{"none", []string{"HOME=/root", "STEM_BROKER_URL=redis://h/0", "GITHUB_TOKEN=s3cr3t"}, Info, "no STEM_* variable"},
		{"query password", []string{"STEM_BROKER_URL=postgres://u@h/db?password=s3cr3t"}, Warning, "(STEM_BROKER_URL)"},
		{"user info and key", []string{"STEM_RESULT_BACKEND_URL=redis://:s3cr3t@h/0", "STEM_CONTROL_SIGNING_KEY=s3cr3t"}, Warning, "(STEM_CONTROL_SIGNING_KEY, STEM_RESULT_BACKEND_URL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Input{Getenv: noEnv, Environ: func() []string { return tt.environ }})
			c := find(t, r, CheckEnvironment)
			if c.Level != tt.level || !strings.Contains(c.Message, tt.msg) || strings.Contains(c.Message, "s3cr3t") {
				t.Fatalf("environment-secrets = %+v, want %s %q", c, tt.level, tt.msg)
			}
			if tt.level == Warning && !strings.Contains(c.Message, "env file") {
				t.Fatalf("environment-secrets gives no recommendation: %q", c.Message)
			}
		})
	}
}

// TestDurabilityCheck: with --connect, a broker that may lose tasks in a
// crash is an error naming the setting; one that cannot tell is a warning.
func TestDurabilityCheck(t *testing.T) {
	tests := []struct {
		name  string
		d     *broker.Durability
		level Level
		msg   string
	}{
		{"durable", &broker.Durability{Durable: true, Detail: "appendonly yes, appendfsync everysec"}, Info, "keeps tasks across a crash: appendonly yes"},
		{"not durable", &broker.Durability{Detail: "appendonly no (aof_enabled:0)"}, Error, "may lose tasks in a crash: appendonly no"},
		{"unknown", nil, Warning, "did not say"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Input{
				Getenv: func(k string) (string, bool) {
					return map[string]string{"STEM_BROKER_URL": "redis://:s3cr3t@h/0"}[k], k == "STEM_BROKER_URL"
				},
				Connect: func(context.Context, string) (*broker.Durability, error) { return tt.d, nil },
			})
			c := find(t, r, CheckDurability)
			if c.Level != tt.level || !strings.Contains(c.Message, tt.msg) || strings.Contains(c.Message, "s3cr3t") {
				t.Fatalf("broker-durability = %+v, want %s %q", c, tt.level, tt.msg)
			}
		})
	}
}
