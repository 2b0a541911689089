package units

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PackagedUnitDirs are where a package installs units, in systemd's order
// of precedence after /etc/systemd/system.
var PackagedUnitDirs = []string{"/usr/lib/systemd/system", "/lib/systemd/system"}

// Action says what Install did with one file.
type Action string

// The actions of Install.
const (
	Created   Action = "created"
	Replaced  Action = "replaced"
	Unchanged Action = "unchanged"
)

// Change is one file Install wrote or left alone.
type Change struct {
	File   File
	Action Action
	// Note explains something the caller should know (for example, that
	// the group could not be set).
	Note string
}

// Installer writes rendered files under a root directory.
type Installer struct {
	// Root is the directory that stands for "/"; required.
	Root string
	// Force replaces files (and symlinks) that differ from the rendering.
	// Without it, such a file is an error and nothing is written.
	Force bool
	// Chown sets a file's owner; nil means os.Lchown. It is called only
	// for files with a Group, when that group exists in Root's /etc/group
	// and the process runs as root.
	Chown func(path string, uid, gid int) error
	// Euid is the effective user id; nil means os.Geteuid.
	Euid func() int
}

// ExistsError says a file exists with other content than Install would
// write, and Force was not set.
type ExistsError struct {
	Path string
	Why  string
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("%s exists and %s; leaving it alone (--force replaces it)", e.Path, e.Why)
}

// Install writes files under in.Root: parent directories are created
// (0755), regular files are written atomically (a temporary file renamed
// into place) with their mode, symlinks are made. A file that already has
// the wanted content is left alone. All files are checked before any is
// written, so a conflict writes nothing.
func (in Installer) Install(files []File) ([]Change, error) {
	if in.Root == "" {
		return nil, errors.New("install: no root directory")
	}
	root, err := filepath.Abs(in.Root)
	if err != nil {
		return nil, fmt.Errorf("install: root %q: %v", in.Root, err)
	}
	if fi, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("install: root: %v", errText(err))
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("install: root %s is not a directory", root)
	}
	plan := make([]Change, len(files))
	for i, f := range files {
		if !filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("install: %q is not a clean absolute path", f.Path)
		}
		a, err := in.compare(root, f)
		if err != nil {
			return nil, err
		}
		plan[i] = Change{File: f, Action: a}
	}
	gids := map[string]int{}
	for i, c := range plan {
		dst := filepath.Join(root, c.File.Path)
		switch {
		case c.Action != Unchanged:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return plan[:i], fmt.Errorf("install: %v", errText(err))
			}
			if err := write(dst, c.File); err != nil {
				return plan[:i], err
			}
		case c.File.Link == "":
			if err := os.Chmod(dst, c.File.Mode); err != nil {
				return plan[:i], fmt.Errorf("install: %v", errText(err))
			}
		}
		if c.File.Group != "" && c.File.Link == "" {
			plan[i].Note = in.setGroup(root, dst, c.File.Group, gids)
		}
	}
	return plan, nil
}

// compare says what writing f under root would do, or why it may not.
func (in Installer) compare(root string, f File) (Action, error) {
	dst := filepath.Join(root, f.Path)
	fi, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return Created, nil
	}
	if err != nil {
		return "", fmt.Errorf("install: %v", errText(err))
	}
	var why string
	switch {
	case f.Link != "":
		if fi.Mode()&fs.ModeSymlink != 0 {
			if cur, err := os.Readlink(dst); err == nil && sameTarget(root, cur, f.Link) {
				return Unchanged, nil
			}
		}
		why = "is not a symlink to " + f.Link
	case !fi.Mode().IsRegular():
		why = "is not a regular file"
	default:
		cur, err := os.ReadFile(dst)
		if err != nil {
			return "", fmt.Errorf("install: %v", errText(err))
		}
		if bytes.Equal(cur, f.Content) {
			return Unchanged, nil
		}
		why = "differs from what would be written"
	}
	if !in.Force {
		return "", &ExistsError{Path: f.Path, Why: why}
	}
	return Replaced, nil
}

// sameTarget reports whether symlink targets a and b name the same file
// under root: /lib/systemd/system/x and /usr/lib/systemd/system/x are one
// file where /lib is a link to usr/lib, as `systemctl enable` may write
// either.
func sameTarget(root, a, b string) bool {
	if a == b {
		return true
	}
	if !filepath.IsAbs(a) || !filepath.IsAbs(b) {
		return false
	}
	fa, errA := os.Stat(filepath.Join(root, a))
	fb, errB := os.Stat(filepath.Join(root, b))
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

func write(dst string, f File) error {
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".stem-tmp")
	_ = os.Remove(tmp)
	var err error
	if f.Link != "" {
		err = os.Symlink(f.Link, tmp)
	} else if err = os.WriteFile(tmp, f.Content, f.Mode); err == nil {
		err = os.Chmod(tmp, f.Mode) // WriteFile's mode is filtered by the umask.
	}
	if fi, lerr := os.Lstat(dst); err == nil && lerr == nil && fi.IsDir() {
		_ = os.Remove(tmp)
		return fmt.Errorf("install: %s is a directory", dst)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("install: %v", errText(err))
	}
	return nil
}

// setGroup gives dst to root:group when it can, and otherwise says why not.
func (in Installer) setGroup(root, dst, group string, cache map[string]int) string {
	gid, ok := cache[group]
	if !ok {
		var err error
		gid, err = LookupGroup(root, group)
		if err != nil {
			return fmt.Sprintf("group %s not set: %v", group, err)
		}
		cache[group] = gid
	}
	euid := os.Geteuid
	if in.Euid != nil {
		euid = in.Euid
	}
	if euid() != 0 {
		return fmt.Sprintf("group %s not set: only root can give the file to root:%s", group, group)
	}
	chown := os.Lchown
	if in.Chown != nil {
		chown = in.Chown
	}
	if err := chown(dst, 0, gid); err != nil {
		return fmt.Sprintf("group %s not set: %v", group, errText(err))
	}
	return ""
}

// LookupGroup returns the id of group from root's /etc/group (not the
// running system's, unless root is "/"), so a package's system group is
// found even inside an image being built.
func LookupGroup(root, group string) (int, error) {
	p := filepath.Join(root, "etc", "group")
	f, err := os.Open(p)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", p, errText(err))
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 3 && fields[0] == group {
			gid, err := strconv.Atoi(fields[2])
			if err != nil || gid < 0 {
				return 0, fmt.Errorf("%s: group %s has a bad id %q", p, group, fields[2])
			}
			return gid, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%s: %v", p, err)
	}
	return 0, fmt.Errorf("no group %s in %s (install the package, or create the system user first)", group, p)
}

// PackagedUnitDir returns the directory under root where a package
// installed the template unit, and "" when none did.
func PackagedUnitDir(root string) string {
	for _, d := range PackagedUnitDirs {
		if fi, err := os.Stat(filepath.Join(root, d, TemplateUnit)); err == nil && fi.Mode().IsRegular() {
			return d
		}
	}
	return ""
}

func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.New + ": " + le.Err.Error()
	}
	return err.Error()
}

// InstallPlan is what installing a Spec under a root writes.
type InstallPlan struct {
	Files []File
	// Packaged is the directory of the packaged template and target when
	// they are byte for byte this rendering: they are used, not written.
	Packaged string
	// Overrides names the packaged template that differs from this
	// rendering (another stem version, or other settings): the rendering
	// is written to DefaultUnitDir, which overrides it.
	Overrides string
}

// PlanInstall decides what installing s under root writes. With s.UnitDir
// empty, the packaged units (PackagedUnitDir) are used when they match the
// rendering, else the template and target go to DefaultUnitDir; with
// enable false, the nodes' enable symlinks are left out.
func PlanInstall(s Spec, root string, enable bool) (InstallPlan, error) {
	var p InstallPlan
	packaged := ""
	if s.UnitDir == "" {
		s.UnitDir, packaged = DefaultUnitDir, PackagedUnitDir(root)
	}
	files, err := Render(s)
	if err != nil {
		return p, err
	}
	if packaged != "" && !packagedMatches(root, packaged, files) {
		p.Overrides = filepath.Join(packaged, TemplateUnit)
	} else if packaged != "" {
		s.UnitDir, p.Packaged = packaged, packaged
		if files, err = Render(s); err != nil {
			return p, err
		}
	}
	for _, f := range files {
		unit := f.Kind == KindTemplate || f.Kind == KindTarget
		if !(p.Packaged != "" && unit) && (enable || f.Kind != KindEnableLink) {
			p.Files = append(p.Files, f)
		}
	}
	return p, nil
}

// packagedMatches reports whether the template and target under root/dir
// are byte for byte what files renders.
func packagedMatches(root, dir string, files []File) bool {
	for _, f := range files {
		if f.Kind != KindTemplate && f.Kind != KindTarget {
			continue
		}
		cur, err := os.ReadFile(filepath.Join(root, dir, filepath.Base(f.Path)))
		if err != nil || !bytes.Equal(cur, f.Content) {
			return false
		}
	}
	return true
}
