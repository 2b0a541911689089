// Package routing reads stem's routing file: the default queue, the queues
// workers consume, aliases that name groups of queues or broadcast
// channels, and the broadcast channels themselves (STEM_ROUTING_CONFIG).
//
// The file is YAML:
//
//	default_queue: default
//	queues:
//	  default: {description: everything else}
//	  critical: {}
//	aliases:
//	  urgent: [critical]
//	broadcasts:
//	  ops: {description: operator announcements}
//
// Load reports every error with the file and line it comes from (it walks
// yaml.v3 nodes rather than decoding into structs, so even semantic errors,
// like an alias naming an unknown queue, point at their line). Dump writes
// a Config back as YAML or JSON, and whatever Dump writes, Load reads back
// to the same Config; Sample is a commented starter file that loads too.
package routing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/stemhq/stem/config"
	"gopkg.in/yaml.v3"
)

// Config is a routing configuration.
type Config struct {
	// DefaultQueue is where tasks go whose handler names no queue, and what
	// a worker consumes when told nothing else. It must be one of Queues.
	DefaultQueue string `json:"default_queue" yaml:"default_queue"`
	// Queues are the known queues, by name.
	Queues map[string]Queue `json:"queues" yaml:"queues"`
	// Aliases map a name to a list of queues, or to a list of broadcast
	// channels (never a mix).
	Aliases map[string][]string `json:"aliases,omitempty" yaml:"aliases,omitempty"`
	// Broadcasts are the known broadcast channels, by name.
	Broadcasts map[string]Broadcast `json:"broadcasts,omitempty" yaml:"broadcasts,omitempty"`

	// file and lines locate the config's parts for error messages.
	file  string
	lines map[string]int
}

// Queue describes one queue.
type Queue struct {
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
}

// Broadcast describes one broadcast channel.
type Broadcast struct {
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
}

// Default returns the routing used when there is no routing file: one
// queue, "default".
func Default() *Config {
	return &Config{DefaultQueue: "default", Queues: map[string]Queue{"default": {}}}
}

// File is the path the config was loaded from ("" if not loaded).
func (c *Config) File() string { return c.file }

// Error is a routing file error, located at a line when one is known.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("routing file %s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("routing file %s: %s", e.File, e.Msg)
	}
	return "routing: " + e.Msg
}

func (c *Config) errorf(key, format string, args ...any) *Error {
	return &Error{File: c.file, Line: c.lines[key], Msg: fmt.Sprintf(format, args...)}
}

// UnknownError reports a name that is neither a queue (or broadcast
// channel) nor an alias of the routing file.
type UnknownError struct {
	Name string
	// Kind is "queue" or "broadcast channel".
	Kind string
	File string
}

func (e *UnknownError) Error() string {
	where := "the routing"
	if e.File != "" {
		where = "routing file " + e.File
	}
	return fmt.Sprintf("unknown %s or alias %q: %s defines no such name", e.Kind, e.Name, where)
}

// Load reads and validates the routing file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{File: path, Msg: err.Error()}
	}
	return Parse(path, data)
}

// Parse reads and validates routing YAML; file names it in errors.
func Parse(file string, data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	c := &Config{file: file, lines: map[string]int{}}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &Error{File: file, Msg: "the file is empty; `stem routing dump --sample` prints a starter"}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{File: file, Line: root.Line, Msg: "expected a mapping with default_queue, queues, aliases, broadcasts"}
	}
	err := eachPair(c, root, "", func(k, v *yaml.Node) error {
		switch k.Value {
		case "default_queue":
			c.lines["default_queue"] = v.Line
			s, err := scalar(c, v, "default_queue")
			c.DefaultQueue = s
			return err
		case "queues":
			c.Queues = map[string]Queue{}
			c.lines["queues"] = k.Line
			return eachPair(c, v, "queues", func(k, v *yaml.Node) error {
				c.lines["queues."+k.Value] = k.Line
				d, err := described(c, v, "queue "+k.Value)
				c.Queues[k.Value] = Queue{Description: d}
				return err
			})
		case "broadcasts":
			c.Broadcasts = map[string]Broadcast{}
			return eachPair(c, v, "broadcasts", func(k, v *yaml.Node) error {
				c.lines["broadcasts."+k.Value] = k.Line
				d, err := described(c, v, "broadcast channel "+k.Value)
				c.Broadcasts[k.Value] = Broadcast{Description: d}
				return err
			})
		case "aliases":
			c.Aliases = map[string][]string{}
			return eachPair(c, v, "aliases", func(k, v *yaml.Node) error {
				c.lines["aliases."+k.Value] = k.Line
				names, err := stringList(c, v, "alias "+k.Value)
				c.Aliases[k.Value] = names
				return err
			})
		}
		return &Error{File: file, Line: k.Line, Msg: fmt.Sprintf("unknown key %q (known: default_queue, queues, aliases, broadcasts)", k.Value)}
	})
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// eachPair calls f for each key and value of mapping node m, refusing
// duplicate and non-scalar keys.
func eachPair(c *Config, m *yaml.Node, what string, f func(k, v *yaml.Node) error) error {
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return nil // "queues:" with nothing under it
	}
	if m.Kind != yaml.MappingNode {
		return &Error{File: c.file, Line: m.Line, Msg: fmt.Sprintf("%s must be a mapping of names", what)}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return &Error{File: c.file, Line: k.Line, Msg: "keys must be plain names"}
		}
		if seen[k.Value] {
			return &Error{File: c.file, Line: k.Line, Msg: fmt.Sprintf("%q is defined twice", k.Value)}
		}
		seen[k.Value] = true
		if err := f(k, v); err != nil {
			return err
		}
	}
	return nil
}

func scalar(c *Config, v *yaml.Node, what string) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return "", &Error{File: c.file, Line: v.Line, Msg: what + " must be a name"}
	}
	return v.Value, nil
}

// described reads a queue or channel entry: empty, or {description: ...}.
func described(c *Config, v *yaml.Node, what string) (string, error) {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return "", nil
	}
	if v.Kind != yaml.MappingNode {
		return "", &Error{File: c.file, Line: v.Line, Msg: what + ": expected {} or {description: ...}"}
	}
	var desc string
	err := eachPair(c, v, what, func(k, v *yaml.Node) error {
		if k.Value != "description" {
			return &Error{File: c.file, Line: k.Line, Msg: fmt.Sprintf("%s: unknown key %q (known: description)", what, k.Value)}
		}
		if v.Kind != yaml.ScalarNode {
			return &Error{File: c.file, Line: v.Line, Msg: what + ": description must be text"}
		}
		desc = v.Value
		return nil
	})
	return desc, err
}

// stringList reads a name or a list of names.
func stringList(c *Config, v *yaml.Node, what string) ([]string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" || v.Value == "" {
			break
		}
		return []string{v.Value}, nil
	case yaml.SequenceNode:
		out := make([]string, 0, len(v.Content))
		for _, item := range v.Content {
			if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
				return nil, &Error{File: c.file, Line: item.Line, Msg: what + ": every item must be a name"}
			}
			out = append(out, item.Value)
		}
		return out, nil
	}
	return nil, &Error{File: c.file, Line: v.Line, Msg: what + ": expected a name or a list of names"}
}

// Validate checks the config: valid names, a default queue that is one of
// the queues, aliases that name only queues or only channels and do not
// shadow them. Loaded configs name the file and line.
func (c *Config) Validate() error {
	if c.DefaultQueue == "" {
		return c.errorf("default_queue", "default_queue is missing")
	}
	if len(c.Queues) == 0 {
		return c.errorf("queues", "no queues are defined")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Queues)) {
		if !config.ValidName(name) {
			return c.errorf("queues."+name, "queue name %q may hold only letters, digits and . _ - :", name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Broadcasts)) {
		if !config.ValidName(name) {
			return c.errorf("broadcasts."+name, "broadcast channel name %q may hold only letters, digits and . _ - :", name)
		}
		if _, ok := c.Queues[name]; ok {
			return c.errorf("broadcasts."+name, "%q is both a queue and a broadcast channel", name)
		}
	}
	if _, ok := c.Queues[c.DefaultQueue]; !ok {
		return c.errorf("default_queue", "default_queue %q is not one of the queues (%s)", c.DefaultQueue, strings.Join(slices.Sorted(maps.Keys(c.Queues)), ", "))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Aliases)) {
		key := "aliases." + name
		if !config.ValidName(name) {
			return c.errorf(key, "alias name %q may hold only letters, digits and . _ - :", name)
		}
		if _, ok := c.Queues[name]; ok {
			return c.errorf(key, "alias %q has the name of a queue", name)
		}
		if _, ok := c.Broadcasts[name]; ok {
			return c.errorf(key, "alias %q has the name of a broadcast channel", name)
		}
		targets := c.Aliases[name]
		if len(targets) == 0 {
			return c.errorf(key, "alias %q names nothing", name)
		}
		var queues, channels int
		for _, t := range targets {
			_, q := c.Queues[t]
			_, b := c.Broadcasts[t]
			switch {
			case q:
				queues++
			case b:
				channels++
			case c.Aliases[t] != nil:
				return c.errorf(key, "alias %q names alias %q: aliases name queues or channels only", name, t)
			default:
				return c.errorf(key, "alias %q names %q, which is neither a queue nor a broadcast channel", name, t)
			}
		}
		if queues > 0 && channels > 0 {
			return c.errorf(key, "alias %q mixes queues and broadcast channels", name)
		}
	}
	return nil
}

// ResolveQueues turns queue names and aliases into queue names, in order,
// without duplicates. A name that is neither gives an *UnknownError; an
// alias of broadcast channels is an error too.
func (c *Config) ResolveQueues(names []string) ([]string, error) {
	return c.resolve(names, "queue", func(n string) bool { _, ok := c.Queues[n]; return ok })
}

// ResolveBroadcasts turns broadcast channel names and aliases into channel
// names, in order, without duplicates.
func (c *Config) ResolveBroadcasts(names []string) ([]string, error) {
	return c.resolve(names, "broadcast channel", func(n string) bool { _, ok := c.Broadcasts[n]; return ok })
}

func (c *Config) resolve(names []string, kind string, known func(string) bool) ([]string, error) {
	var out []string
	for _, n := range names {
		switch targets, isAlias := c.Aliases[n]; {
		case known(n):
			out = append(out, n)
		case isAlias:
			for _, t := range targets {
				if !known(t) {
					return nil, &Error{File: c.file, Msg: fmt.Sprintf("alias %q names %q, which is not a %s", n, t, kind)}
				}
			}
			out = append(out, targets...)
		default:
			return nil, &UnknownError{Name: n, Kind: kind, File: c.file}
		}
	}
	return dedupe(out), nil
}

// Format is an output format of Dump.
type Format int

// Dump formats.
const (
	YAML Format = iota
	JSON
)

// Dump writes c as YAML or JSON, keys sorted. Load reads the YAML back to
// an equal Config; the JSON has the same keys.
func (c *Config) Dump(w io.Writer, f Format) error {
	out := *c
	if out.Queues == nil {
		out.Queues = map[string]Queue{}
	}
	var data []byte
	var err error
	switch f {
	case JSON:
		data, err = json.MarshalIndent(&out, "", "  ")
		data = append(data, '\n')
	default:
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		err = enc.Encode(&out)
		if err == nil {
			err = enc.Close()
		}
		data = buf.Bytes()
	}
	if err != nil {
		return fmt.Errorf("encoding the routing: %w", err)
	}
	_, err = w.Write(data)
	return err
}

// Equal reports whether two configs hold the same routing (file and line
// information aside).
func (c *Config) Equal(o *Config) bool {
	a, _ := json.Marshal(c)
	b, _ := json.Marshal(o)
	return bytes.Equal(a, b)
}

// Sample returns a commented starter routing file. It loads without error
// into SampleConfig, and Dump of that loads back unchanged.
func Sample() []byte { return []byte(sample) }

const sample = `# stem routing file. Point STEM_ROUTING_CONFIG (or --routing-config) at it.
# 'stem routing dump' prints the active routing; 'stem worker multi --queue'
# and '--broadcast' resolve the aliases below.

# Where tasks go when their handler names no queue, and what workers consume
# when told nothing else. Must be one of the queues.
default_queue: default

# The queues, by name (letters, digits and . _ - :).
queues:
  default:
    description: everything without a queue of its own
  critical:
    description: short tasks that must not wait behind long ones
  reports:
    description: long-running report builds

# Aliases name a list of queues, or a list of broadcast channels, for
# --queue and --broadcast. A worker consumes queues in the order given.
aliases:
  urgent: [critical]
  all: [critical, default, reports]
  everyone: [ops]

# Broadcast channels workers may join with --broadcast.
broadcasts:
  ops:
    description: operator announcements
`

// SampleConfig is the Config that Sample loads into.
func SampleConfig() *Config {
	return &Config{
		DefaultQueue: "default",
		Queues: map[string]Queue{
			"default":  {Description: "everything without a queue of its own"},
			"critical": {Description: "short tasks that must not wait behind long ones"},
			"reports":  {Description: "long-running report builds"},
		},
		Aliases: map[string][]string{
			"urgent":   {"critical"},
			"all":      {"critical", "default", "reports"},
			"everyone": {"ops"},
		},
		Broadcasts: map[string]Broadcast{"ops": {Description: "operator announcements"}},
	}
}

// ListError is an error resolving the queues (Kind "queue") or the
// broadcast channels (Kind "broadcast") given to ResolveFile.
type ListError struct {
	Kind string
	// Name is the name that is not valid, when no routing file is used
	// (Err is then nil).
	Name string
	Err  error
}

func (e *ListError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("%s %q: names hold only letters, digits and . _ - :", e.Kind, e.Name)
	}
	return e.Kind + ": " + e.Err.Error()
}

func (e *ListError) Unwrap() error { return e.Err }

// ResolveFile resolves queue and broadcast names or aliases through the
// routing file at path (a bad file is an *Error). Without a routing file
// (path ""), the names are taken as they are, without duplicates, once
// each is a valid name. A name that does not resolve is a *ListError.
func ResolveFile(path string, queues, broadcasts []string) (qs, bs []string, err error) {
	if path == "" {
		for _, l := range []struct {
			kind  string
			names []string
		}{{"queue", queues}, {"broadcast", broadcasts}} {
			for _, n := range l.names {
				if !config.ValidName(n) {
					return nil, nil, &ListError{Kind: l.kind, Name: n}
				}
			}
		}
		return dedupe(queues), dedupe(broadcasts), nil
	}
	rc, err := Load(path)
	if err != nil {
		return nil, nil, err
	}
	if qs, err = rc.ResolveQueues(queues); err != nil {
		return nil, nil, &ListError{Kind: "queue", Err: err}
	}
	if bs, err = rc.ResolveBroadcasts(broadcasts); err != nil {
		return nil, nil, &ListError{Kind: "broadcast", Err: err}
	}
	return qs, bs, nil
}

func dedupe(s []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}
