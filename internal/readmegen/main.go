// Command readmegen keeps the README's variable table (under
// "## Configuration") equal to config.Vars:
//
//	go run ./internal/readmegen               print the table
//	go run ./internal/readmegen -w README.md  rewrite the table in place
//	go run ./internal/readmegen -check README.md
//	                                          exit 1 when the table is stale (make verify)
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/stemhq/stem/config"
)

func q(s string) string {
	if s == "" {
		return ""
	}
	if strings.Contains(s, " ") {
		return s
	}
	return "`" + s + "`"
}

// rows returns the table's rows, one per variable of config.Vars.
func rows() []string {
	out := make([]string, 0, len(config.Vars))
	for _, v := range config.Vars {
		out = append(out, fmt.Sprintf("| `%s` | %s | %s | %s |", v.Key, q(v.Flag), q(v.Default), v.Doc))
	}
	return out
}

// isRow reports whether a README line is a row of the table (the test
// variables, documented beside it, are not config.Vars).
func isRow(line string) bool {
	return strings.HasPrefix(line, "| `STEM_") && !strings.HasPrefix(line, "| `STEM_TEST_")
}

// rewrite replaces the README's contiguous run of table rows with want.
func rewrite(readme string, want []string) (string, error) {
	lines := strings.Split(readme, "\n")
	start, end := -1, -1
	for i, l := range lines {
		if isRow(l) {
			if start < 0 {
				start = i
			}
			end = i + 1
		} else if start >= 0 && end == i {
			break
		}
	}
	if start < 0 {
		return "", fmt.Errorf("no variable table (rows starting with | `STEM_)")
	}
	out := append(append(append([]string{}, lines[:start]...), want...), lines[end:]...)
	return strings.Join(out, "\n"), nil
}

func main() {
	write := flag.String("w", "", "rewrite the table of this README in place")
	check := flag.String("check", "", "exit 1 when the table of this README differs from config.Vars")
	flag.Parse()
	path := *write + *check
	if path == "" {
		fmt.Println(strings.Join(rows(), "\n"))
		return
	}
	b, err := os.ReadFile(path)
	if err == nil {
		var got string
		if got, err = rewrite(string(b), rows()); err == nil {
			switch {
			case *check != "" && got != string(b):
				err = fmt.Errorf("the variable table of %s is stale: run go run ./internal/readmegen -w %s", path, path)
			case *write != "":
				err = os.WriteFile(path, []byte(got), 0o644)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "readmegen:", err)
		os.Exit(1)
	}
}
