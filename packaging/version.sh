#!/bin/sh
# Prints the package version: the latest v-tag without its "v" (with
# "+N.gSHA" after it for later commits), else 0.1.0~gitDATE.SHA, which
# sorts before 0.1.0 in dpkg and rpm alike. Versions start with a digit.
set -e
if v=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "${v#v}" | sed 's/-\([0-9]*\)-g/+\1.g/'
	exit 0
fi
sha=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
date=$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date +%Y%m%d)
echo "0.1.0~git${date}.${sha}"
