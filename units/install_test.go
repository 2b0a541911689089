package units

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func mustRender(t *testing.T, s Spec) []File {
	t.Helper()
	files, err := Render(s)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func actions(changes []Change) string {
	var out []string
	for _, c := range changes {
		out = append(out, string(c.Action))
	}
	return strings.Join(out, ",")
}

func TestInstallCreatesThenLeavesAlone(t *testing.T) {
	root := t.TempDir()
	files := mustRender(t, Spec{Nodes: []Node{{Name: "alpha", Queues: []string{"critical"}}}})
	in := Installer{Root: root, Euid: func() int { return 1000 }}
	changes, err := in.Install(files)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(changes); got != "created,created,created,created,created" {
		t.Errorf("first install: %s", got)
	}
	for _, f := range files {
		p := filepath.Join(root, f.Path)
		if f.Link != "" {
			if l, err := os.Readlink(p); err != nil || l != f.Link {
				t.Errorf("%s: link %q, %v; want %q", f.Path, l, err, f.Link)
			}
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.Mode {
			t.Errorf("%s: mode %04o, want %04o", f.Path, fi.Mode().Perm(), f.Mode)
		}
	}
	// Not root, no group file: the note says why the group was not set.
	env := changes[2]
	if env.File.Kind != KindNodeEnv || !strings.Contains(env.Note, "group stem not set") {
		t.Errorf("node env change %+v: want a note about the group", env)
	}
	changes, err = in.Install(files)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(changes); got != "unchanged,unchanged,unchanged,unchanged,unchanged" {
		t.Errorf("second install: %s", got)
	}
}

func TestInstallRefusesToClobber(t *testing.T) {
	root := t.TempDir()
	files := mustRender(t, Spec{Nodes: []Node{{Name: "alpha"}}})
	in := Installer{Root: root}
	if _, err := in.Install(files); err != nil {
		t.Fatal(err)
	}
	edited := filepath.Join(root, "etc/stem/nodes/alpha.env")
	if err := os.WriteFile(edited, []byte("STEM_WORKER_CONCURRENCY=3\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	// A different rendering must not replace the edited file, nor write
	// anything else.
	files2 := mustRender(t, Spec{Nodes: []Node{{Name: "alpha", Concurrency: 4}, {Name: "beta"}}})
	_, err := in.Install(files2)
	var ee *ExistsError
	if !errors.As(err, &ee) || ee.Path != "/etc/stem/nodes/alpha.env" || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err = %v; want an ExistsError for the edited env file", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/stem/nodes/beta.env")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("beta.env was written despite the conflict (%v)", err)
	}
	in.Force = true
	changes, err := in.Install(files2)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(changes); got != "unchanged,unchanged,replaced,unchanged,unchanged,created,created,created" {
		t.Errorf("forced install: %s", got)
	}
	b, _ := os.ReadFile(edited)
	if !strings.Contains(string(b), "STEM_WORKER_CONCURRENCY=4") {
		t.Errorf("forced install left %q", b)
	}
}

func TestInstallLinkConflictAndSameFile(t *testing.T) {
	root := t.TempDir()
	// A merged-/usr root: /lib is a link to usr/lib, and the package's
	// template lives there.
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	tmpl := filepath.Join(root, "usr/lib/systemd/system", TemplateUnit)
	if err := os.WriteFile(tmpl, []byte("[Unit]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := PackagedUnitDir(root); got != "/usr/lib/systemd/system" {
		t.Fatalf("PackagedUnitDir = %q", got)
	}
	// systemctl enable wrote a link through /lib.
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/lib/systemd/system/"+TemplateUnit, filepath.Join(wants, "stem-worker@alpha.service")); err != nil {
		t.Fatal(err)
	}
	var links []File
	for _, f := range mustRender(t, Spec{UnitDir: "/usr/lib/systemd/system", Nodes: []Node{{Name: "alpha"}}}) {
		if f.Kind == KindEnableLink {
			links = append(links, f)
		}
	}
	changes, err := Installer{Root: root}.Install(links)
	if err != nil {
		t.Fatal(err)
	}
	if got := actions(changes); got != "unchanged,created" {
		t.Errorf("links: %s", got)
	}
	// A link elsewhere is a conflict.
	other := filepath.Join(root, "etc/systemd/system/stem-workers.target.wants/stem-worker@alpha.service")
	_ = os.Remove(other)
	if err := os.Symlink("/dev/null", other); err != nil {
		t.Fatal(err)
	}
	if _, err := (Installer{Root: root}).Install(links); err == nil || !strings.Contains(err.Error(), "is not a symlink to /usr/lib/systemd/system/stem-worker@.service") {
		t.Errorf("err = %v", err)
	}
}

func TestInstallSetsGroup(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nstem:x:996:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var chowned []string
	in := Installer{Root: root, Euid: func() int { return 0 }, Chown: func(p string, uid, gid int) error {
		rel, _ := filepath.Rel(root, p)
		chowned = append(chowned, rel+":"+strconv.Itoa(uid)+":"+strconv.Itoa(gid))
		return nil
	}}
	changes, err := in.Install(mustRender(t, Spec{Nodes: []Node{{Name: "alpha"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(chowned, " ") != "etc/stem/nodes/alpha.env:0:996" {
		t.Errorf("chowned %q", chowned)
	}
	for _, c := range changes {
		if c.Note != "" {
			t.Errorf("%s: note %q", c.File.Path, c.Note)
		}
	}
	if _, err := LookupGroup(root, "nogroup"); err == nil || !strings.Contains(err.Error(), "no group nogroup in") {
		t.Errorf("LookupGroup(nogroup) err = %v", err)
	}
}

func TestInstallBadRoot(t *testing.T) {
	files := mustRender(t, Spec{})
	if _, err := (Installer{}).Install(files); err == nil {
		t.Error("no root: want an error")
	}
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (Installer{Root: f}).Install(files); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("file as root: err = %v", err)
	}
	if _, err := (Installer{Root: t.TempDir()}).Install([]File{{Path: "etc/x"}}); err == nil || !strings.Contains(err.Error(), "not a clean absolute path") {
		t.Errorf("relative path: err = %v", err)
	}
}

// TestPlanInstall: the packaged units are used when they are this
// rendering, overridden when they differ; --no-enable drops the links.
func TestPlanInstall(t *testing.T) {
	root := t.TempDir()
	s := Spec{Nodes: []Node{{Name: "alpha"}}}
	count := func(files []File, kinds ...Kind) int {
		n := 0
		for _, f := range files {
			for _, k := range kinds {
				if f.Kind == k {
					n++
				}
			}
		}
		return n
	}
	p, err := PlanInstall(s, root, true)
	if err != nil || p.Packaged != "" || p.Overrides != "" || count(p.Files, KindTemplate, KindTarget) != 2 || count(p.Files, KindEnableLink) == 0 {
		t.Fatalf("no packaged units: %+v, %v", p, err)
	}
	pkg := PackagedUnitDirs[0]
	packaged := s
	packaged.UnitDir = pkg
	if _, err := (Installer{Root: root}).Install(mustRender(t, packaged)); err != nil {
		t.Fatal(err)
	}
	p, err = PlanInstall(s, root, false)
	if err != nil || p.Packaged != pkg || count(p.Files, KindTemplate, KindTarget, KindEnableLink) != 0 || len(p.Files) == 0 {
		t.Fatalf("matching packaged units, no enable: %+v, %v", p, err)
	}
	other := s
	other.Watchdog = 3 * DefaultWatchdog
	p, err = PlanInstall(other, root, true)
	if err != nil || p.Packaged != "" || p.Overrides != filepath.Join(pkg, TemplateUnit) || count(p.Files, KindTemplate) != 1 {
		t.Fatalf("differing packaged units: %+v, %v", p, err)
	}
	explicit := s
	explicit.UnitDir = "/opt/units"
	if p, err = PlanInstall(explicit, root, true); err != nil || p.Packaged != "" || p.Overrides != "" {
		t.Fatalf("an explicit unit directory: %+v, %v", p, err)
	}
}
