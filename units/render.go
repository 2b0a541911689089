package units

import (
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
)

// Kind says what a rendered File is.
type Kind int

// The kinds of File.
const (
	// KindTemplate is stem-worker@.service.
	KindTemplate Kind = iota + 1
	// KindTarget is stem-workers.target.
	KindTarget
	// KindNodeEnv is a node's env file.
	KindNodeEnv
	// KindEnableLink is a symlink `systemctl enable` would make.
	KindEnableLink
)

var kindNames = [...]string{KindTemplate: "template", KindTarget: "target", KindNodeEnv: "node-env", KindEnableLink: "enable-link"}

func (k Kind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// File is one rendered file: its absolute path on the target system, and
// either its content and mode or, for a symlink, its target.
type File struct {
	Kind Kind
	// Path is absolute, e.g. /etc/systemd/system/stem-worker@.service.
	Path string
	// Mode is the file's permission bits (0 for a symlink).
	Mode fs.FileMode
	// Group, when set, should own the file (the node env files, which may
	// hold secrets, are root:GROUP 0640).
	Group string
	// Content is the file's bytes; nil for a symlink.
	Content []byte
	// Link is a symlink's target; "" for a regular file.
	Link string
}

// Render renders every file of s: the template, the target, and each
// node's env file and enable links, in that order. s is completed with
// WithDefaults and validated first.
func Render(s Spec) ([]File, error) {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	out := []File{
		{Kind: KindTemplate, Path: path.Join(s.UnitDir, TemplateUnit), Mode: 0o644, Content: renderTemplate(s)},
		{Kind: KindTarget, Path: path.Join(s.UnitDir, TargetUnit), Mode: 0o644, Content: renderTarget()},
	}
	for _, n := range s.Nodes {
		out = append(out, File{Kind: KindNodeEnv, Path: path.Join(s.NodeEnvDir, n.Name+".env"), Mode: 0o640, Group: s.Group, Content: renderNodeEnv(n)})
		instance := "stem-worker@" + n.Name + ".service"
		for _, wantedBy := range wantedBy {
			out = append(out, File{Kind: KindEnableLink, Path: path.Join(DefaultUnitDir, wantedBy+".wants", instance), Link: path.Join(s.UnitDir, TemplateUnit)})
		}
	}
	return out, nil
}

// wantedBy is the template's [Install] WantedBy=: enabling a node starts it
// at boot and makes stem-workers.target want it.
var wantedBy = []string{"multi-user.target", TargetUnit}

// Escape doubles every '%' of s so systemd reads it literally in a unit
// file, where it would otherwise expand specifiers.
func Escape(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// unitWriter builds a unit file line by line.
type unitWriter struct{ b strings.Builder }

func (w *unitWriter) comment(lines ...string) {
	for _, l := range lines {
		if l == "" {
			w.b.WriteString("#\n")
			continue
		}
		w.b.WriteString("# " + l + "\n")
	}
}

func (w *unitWriter) section(name string) {
	if w.b.Len() > 0 {
		w.b.WriteString("\n")
	}
	w.b.WriteString("[" + name + "]\n")
}

// set writes key=value; value must already be escaped where needed.
func (w *unitWriter) set(key, value string) { w.b.WriteString(key + "=" + value + "\n") }

// seconds formats d (whole seconds, checked by Validate) for a unit file.
func seconds(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) + "s" }

// hardening is the sandbox of the template, in the order written. Each
// setting is chosen so the worker, its healthcheck and its exec tasks
// still work: see docs/install.md for what a task that needs more must
// loosen (`systemctl edit stem-worker@.service`).
var hardening = [][2]string{
	{"NoNewPrivileges", "yes"},
	{"CapabilityBoundingSet", ""},
	{"AmbientCapabilities", ""},
	{"ProtectSystem", "strict"},
	{"ProtectHome", "yes"},
	{"PrivateTmp", "yes"},
	{"PrivateDevices", "yes"},
	// Not PrivateUsers=yes: each Exec*= command would get its own user
	// namespace, and ProtectProc=invisible then hides the worker from the
	// ExecStartPost= healthcheck (seen on systemd 252); it would also drop
	// the supplementary groups exec tasks may need.
	{"PrivateMounts", "yes"},
	{"ProtectHostname", "yes"},
	{"ProtectClock", "yes"},
	{"ProtectKernelTunables", "yes"},
	{"ProtectKernelModules", "yes"},
	{"ProtectKernelLogs", "yes"},
	{"ProtectControlGroups", "yes"},
	// invisible hides other users' processes; not ProcSubset=pid: the
	// pidfile check needs /proc/stat's boot time.
	{"ProtectProc", "invisible"},
	{"RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
	{"RestrictNamespaces", "yes"},
	{"RestrictRealtime", "yes"},
	{"RestrictSUIDSGID", "yes"},
	{"LockPersonality", "yes"},
	{"MemoryDenyWriteExecute", "yes"},
	{"SystemCallArchitectures", "native"},
	{"SystemCallFilter", "@system-service"},
	{"SystemCallFilter", "~@privileged @resources"},
	{"SystemCallErrorNumber", "EPERM"},
	{"RemoveIPC", "yes"},
	{"DevicePolicy", "closed"},
	{"KeyringMode", "private"},
}

func renderTemplate(s Spec) []byte {
	var w unitWriter
	run := "/run/" + s.Name
	pidfile := Escape(run) + "/%i.pid"
	bin := Escape(s.Binary)
	w.comment(
		TemplateUnit+": one stem worker node per instance (stem-worker@alpha.service).",
		"Generated by `stem units generate`. Do not edit this file: override settings with",
		"`systemctl edit stem-worker@.service` (every node) or `systemctl edit stem-worker@NODE` (one).",
		"",
		"Settings: "+s.EnvFile+" (every node), then "+s.NodeEnvDir+"/NODE.env (this node wins).",
		"Reload (`systemctl reload`) is a warm restart: the worker stops claiming, lets running",
		"tasks finish, exits with status "+strconv.Itoa(RestartExitStatus)+", and systemd starts it again, which re-reads",
		"the env files and the tasks file. (Routing aliases are resolved by `stem units install`.)",
	)
	w.section("Unit")
	w.set("Description", "stem worker %i")
	w.set("Documentation", "man:stem-worker-run(1) man:stem-units(1)")
	// Ordering only: a broker on the same host starts before the workers
	// and stops after them. Absent units are ignored.
	w.set("After", "network-online.target redis-server.service redis.service postgresql.service")
	w.set("Wants", "network-online.target")
	w.set("PartOf", TargetUnit)
	// Every start counts, reloads (warm restarts) included: five a minute.
	w.set("StartLimitIntervalSec", "60s")
	w.set("StartLimitBurst", "5")

	w.section("Service")
	w.set("Type", "notify")
	w.set("NotifyAccess", "main")
	w.set("User", s.User)
	w.set("Group", s.Group)
	w.set("EnvironmentFile", "-"+Escape(s.EnvFile))
	w.set("EnvironmentFile", "-"+Escape(s.NodeEnvDir)+"/%i.env")
	w.set("ExecStart", bin+" worker run --node %i --pidfile "+pidfile+" --shutdown-grace "+s.ShutdownGrace.String())
	w.set("ExecStartPost", bin+" worker healthcheck --node %i --pidfile "+pidfile)
	w.set("ExecReload", "/bin/kill -"+strings.TrimPrefix(ReloadSignal, "SIG")+" $MAINPID")
	w.set("Restart", "on-failure")
	// Also the pause of a reload between the old process's exit and the
	// new one's start.
	w.set("RestartSec", "2s")
	// A bad command line (64) or configuration (78) does not heal by
	// itself: no restart loop.
	w.set("RestartPreventExitStatus", "64 77 78")
	w.set("RestartForceExitStatus", strconv.Itoa(RestartExitStatus))
	w.set("SuccessExitStatus", strconv.Itoa(RestartExitStatus))
	w.set("TimeoutStartSec", seconds(s.StartTimeout))
	w.set("TimeoutStopSec", seconds(s.StopTimeout))
	w.set("WatchdogSec", seconds(s.Watchdog))
	w.set("KillMode", "mixed")
	w.set("KillSignal", "SIGTERM")
	// Set here because the sandbox forbids setrlimit(2).
	w.set("LimitNOFILE", "65536")
	w.set("RuntimeDirectory", Escape(s.Name))
	w.set("RuntimeDirectoryMode", "0750")
	// Shared by every node: removing it when one node stops would pull
	// the other nodes' pidfiles away.
	w.set("RuntimeDirectoryPreserve", "yes")
	w.set("StateDirectory", Escape(s.Name))
	w.set("StateDirectoryMode", "0750")
	w.set("LogsDirectory", Escape(s.Name))
	w.set("LogsDirectoryMode", "0750")
	w.set("WorkingDirectory", "/var/lib/"+Escape(s.Name))
	w.set("UMask", "0027")
	for _, h := range hardening {
		w.set(h[0], h[1])
	}

	w.section("Install")
	w.set("WantedBy", strings.Join(wantedBy, " "))
	return []byte(w.b.String())
}

func renderTarget() []byte {
	var w unitWriter
	w.comment(
		TargetUnit+": every stem worker node of this host.",
		"Generated by `stem units generate`. `systemctl enable stem-worker@NODE` adds a node;",
		"`systemctl start|stop|restart "+TargetUnit+"` acts on every node (they are PartOf= it).",
	)
	w.section("Unit")
	w.set("Description", "stem workers (every stem-worker@ node)")
	w.set("Documentation", "man:stem-units(1)")
	w.section("Install")
	w.set("WantedBy", "multi-user.target")
	return []byte(w.b.String())
}

func renderNodeEnv(n Node) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# stem worker node %s: settings of stem-worker@%s.service, read after the shared env file.\n", n.Name, n.Name)
	b.WriteString("# Written by `stem units install`. systemd reads it (EnvironmentFile=) at every start:\n")
	fmt.Fprintf(&b, "# apply a change with `systemctl reload stem-worker@%s` (a warm restart).\n", n.Name)
	line := func(k, v string) {
		q, _ := quoteEnvValue(v) // checked by Validate
		b.WriteString(k + "=" + q + "\n")
	}
	if len(n.Queues) > 0 {
		line(VarQueues, strings.Join(n.Queues, ","))
	}
	if len(n.Broadcasts) > 0 {
		line(VarBroadcasts, strings.Join(n.Broadcasts, ","))
	}
	if n.Concurrency > 0 {
		line(VarConcurrency, strconv.Itoa(n.Concurrency))
	}
	if a := n.Autoscale; a != nil {
		line(VarAutoscale, "true")
		line(VarMinConcurrency, strconv.Itoa(a.Min))
		line(VarMaxConcurrency, strconv.Itoa(a.Max))
	}
	for _, e := range n.Env {
		line(e.Key, e.Value)
	}
	return []byte(b.String())
}

// quoteEnvValue writes v so that systemd's EnvironmentFile= parser and
// godotenv (stem's --env-file) both read exactly v: bare when it holds
// only characters neither treats specially, else in single quotes, which
// both take literally. A value with a single quote, a newline or another
// control character has no such spelling and is refused.
func quoteEnvValue(v string) (string, error) {
	if v != "" && strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:,@+=%-") == "" {
		return v, nil
	}
	for _, r := range v {
		if r == '\'' {
			return "", fmt.Errorf("value %q holds a single quote, which an env file cannot carry so that systemd and stem read it alike", v)
		}
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("value %q holds a control character (newline, tab, ...), which an env file cannot carry", v)
		}
	}
	return "'" + v + "'", nil
}
