package tasks

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/worker"
)

// Def is one exec task of a tasks file.
type Def struct {
	Name         string
	Command      []string
	Queue        string
	Timeout      time.Duration
	MaxRetries   int
	RetryBackoff time.Duration
	Env          map[string]string
	Dir          string
	// Line is where the task is defined, for messages.
	Line int
}

// File is a parsed tasks file.
type File struct {
	Path  string
	Tasks []Def // sorted by name
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

var defKeys = map[string]bool{"command": true, "queue": true, "timeout": true, "max_retries": true, "retry_backoff": true, "env": true, "dir": true}

// Load parses a tasks file. Every error names the file and line and is a
// *stem.ConfigError (exit 78).
//
// Format:
//
//	tasks:
//	  reports.build:
//	    command: ["/usr/local/bin/build-report", "--format", "pdf"]
//	    queue: reports        # default: default
//	    timeout: 10m          # Go duration; the process is stopped after it
//	    max_retries: 3        # default 0
//	    retry_backoff: 5s     # base of the exponential backoff; default 1s
//	    dir: /var/lib/reports # working directory
//	    env:
//	      REPORTS_DIR: /var/lib/reports
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, stem.Configf("tasks file %s: %v", path, errorText(err))
	}
	return Parse(path, data)
}

func errorText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

// Parse parses tasks-file content; path is used in messages.
func Parse(path string, data []byte) (*File, error) {
	fail := func(line int, format string, args ...any) error {
		return stem.Configf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		msg := err.Error()
		// yaml.v3 says "yaml: line N: ..."; keep N in our format.
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, fail(line, "%s", m[2])
		}
		return nil, stem.Configf("%s: %s", path, msg)
	}
	f := &File{Path: path}
	if len(doc.Content) == 0 {
		return f, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, "expected a mapping with a 'tasks' key")
	}
	var tasksNode *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if k.Value != "tasks" {
			return nil, fail(k.Line, "unknown key %q (want 'tasks')", k.Value)
		}
		tasksNode = root.Content[i+1]
	}
	if tasksNode == nil || tasksNode.Kind == yaml.ScalarNode && tasksNode.Tag == "!!null" {
		return f, nil
	}
	if tasksNode.Kind != yaml.MappingNode {
		return nil, fail(tasksNode.Line, "'tasks' must map task names to definitions")
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(tasksNode.Content); i += 2 {
		k, v := tasksNode.Content[i], tasksNode.Content[i+1]
		name := k.Value
		if prev, dup := seen[name]; dup {
			return nil, fail(k.Line, "task %q defined twice (first on line %d)", name, prev)
		}
		seen[name] = k.Line
		if !config.ValidName(name) {
			return nil, fail(k.Line, "task name %q may hold only letters, digits, '.', '_', '-' and ':'", name)
		}
		if strings.HasPrefix(name, "stem.") {
			return nil, fail(k.Line, "task name %q: the stem. prefix is reserved for built-in tasks", name)
		}
		if v.Kind != yaml.MappingNode {
			return nil, fail(v.Line, "task %q: expected a mapping with at least 'command'", name)
		}
		d := Def{Name: name, Queue: "default", Line: k.Line}
		for j := 0; j+1 < len(v.Content); j += 2 {
			fk, fv := v.Content[j], v.Content[j+1]
			if !defKeys[fk.Value] {
				return nil, fail(fk.Line, "task %q: unknown key %q (known: command, queue, timeout, max_retries, retry_backoff, dir, env)", name, fk.Value)
			}
			var err error
			switch fk.Value {
			case "command":
				err = fv.Decode(&d.Command)
				if err == nil && len(d.Command) == 0 {
					err = fmt.Errorf("must be a non-empty list: [program, arg, ...]")
				}
				if err == nil && d.Command[0] == "" {
					err = fmt.Errorf("program (first element) is empty")
				}
			case "queue":
				err = fv.Decode(&d.Queue)
				if err == nil && !config.ValidName(d.Queue) {
					err = fmt.Errorf("queue %q may hold only letters, digits, '.', '_', '-' and ':'", d.Queue)
				}
			case "timeout":
				d.Timeout, err = decodeDuration(fv)
			case "retry_backoff":
				d.RetryBackoff, err = decodeDuration(fv)
			case "max_retries":
				err = fv.Decode(&d.MaxRetries)
				if err == nil && d.MaxRetries < 0 {
					err = fmt.Errorf("must be 0 or more")
				}
			case "dir":
				err = fv.Decode(&d.Dir)
			case "env":
				err = fv.Decode(&d.Env)
			}
			if err != nil {
				return nil, fail(fv.Line, "task %q: %s: %s", name, fk.Value, cleanYAMLErr(err))
			}
		}
		if len(d.Command) == 0 {
			return nil, fail(k.Line, "task %q: missing 'command'", name)
		}
		f.Tasks = append(f.Tasks, d)
	}
	sort.Slice(f.Tasks, func(i, j int) bool { return f.Tasks[i].Name < f.Tasks[j].Name })
	return f, nil
}

func decodeDuration(n *yaml.Node) (time.Duration, error) {
	var s string
	if err := n.Decode(&s); err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a Go duration such as 30s, 5m or 1h", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be greater than zero", s)
	}
	return d, nil
}

func cleanYAMLErr(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	msg = strings.TrimSpace(msg)
	if i := strings.Index(msg, ": "); strings.HasPrefix(msg, "line ") && i > 0 {
		msg = msg[i+2:]
	}
	return msg
}

// Register adds every task of f to r as an exec task.
func (f *File) Register(r *worker.Registry, o ExecOptions) error {
	for _, d := range f.Tasks {
		opts := worker.TaskOptions{Queue: d.Queue, MaxRetries: d.MaxRetries, TimeLimit: d.Timeout, RetryBackoff: d.RetryBackoff}
		if err := r.Register(d.Name, Exec(d, o), opts); err != nil {
			return stem.Configf("%s:%d: %v", f.Path, d.Line, err)
		}
	}
	return nil
}
