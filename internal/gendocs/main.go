// Command gendocs writes stem's man pages and shell completions from the
// cobra command tree, for the packages (make man completions). It is a
// build tool, not part of the stem command, so users never see it.
//
//	go run ./internal/gendocs -out build/docs [-version v1.2.3] [-date 2026-01-02]
//
// It writes OUT/man/*.1 (one page per command, section 1) and
// OUT/completions/{stem.bash,_stem,stem.fish}. The man pages' date is
// -date, else $SOURCE_DATE_EPOCH, else today, so that a build from the
// same commit gives the same bytes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/stemhq/stem/cli"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("gendocs", flag.ContinueOnError)
	out := fs.String("out", "", "output directory (required)")
	version := fs.String("version", cli.Version, "version printed in the man pages' footer")
	date := fs.String("date", "", "date of the man pages, YYYY-MM-DD (default: $SOURCE_DATE_EPOCH, else today)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("usage: gendocs -out DIR [-version V] [-date YYYY-MM-DD]")
	}
	when, err := manDate(*date, os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return err
	}
	root := cli.New()
	root.DisableAutoGenTag = true
	return generate(root, *out, *version, when)
}

// manDate picks the man pages' date.
func manDate(flagDate, epoch string) (time.Time, error) {
	switch {
	case flagDate != "":
		t, err := time.Parse("2006-01-02", flagDate)
		if err != nil {
			return time.Time{}, fmt.Errorf("-date %q: want YYYY-MM-DD", flagDate)
		}
		return t, nil
	case epoch != "":
		n, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", epoch)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// generate writes the man pages and completions of root under out.
func generate(root *cobra.Command, out, version string, when time.Time) error {
	manDir := filepath.Join(out, "man")
	compDir := filepath.Join(out, "completions")
	for _, d := range []string{manDir, compDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	header := &doc.GenManHeader{
		Title:   "STEM",
		Section: "1",
		Date:    &when,
		Source:  "stem " + version,
		Manual:  "stem manual",
	}
	if err := doc.GenManTree(root, header, manDir); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	for name, gen := range map[string]func(string) error{
		"stem.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_stem":     root.GenZshCompletionFile,
		"stem.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	} {
		if err := gen(filepath.Join(compDir, name)); err != nil {
			return fmt.Errorf("completion %s: %w", name, err)
		}
	}
	return nil
}
