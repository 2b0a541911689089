// Command readmegen prints the README's variable table from config.Vars:
// go run ./internal/readmegen, then paste it under "## Configuration".
package main

import (
	"fmt"
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

func main() {
	for _, v := range config.Vars {
		fmt.Printf("| `%s` | %s | %s | %s |\n", v.Key, q(v.Flag), q(v.Default), v.Doc)
	}
}
