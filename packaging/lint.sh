#!/usr/bin/env bash
# Lints the packages in dist/ (make package runs it after building):
#   lintian --pedantic: no error and no warning; every override is in
#     packaging/lintian-overrides with its reason;
#   rpmlint: no error (its warnings are printed); the few deliberate
#     ones are filtered in packaging/rpmlint.toml, each with its reason.
# Both run as an unprivileged user (nobody), never as root: rpmlint unpacks
# nfpm's RPMs with absolute paths, and as root would write the package's
# files onto /. A cpio wrapper adding --no-absolute-filenames comes first on
# PATH as a second guard. Under CI a missing tool is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
for t in lintian rpmlint setpriv; do command -v "$t" >/dev/null || missing="$missing $t"; done
if [ -n "$missing" ]; then
	if [ -n "${CI:-}" ]; then echo "lint: missing$missing (apt-get install lintian rpmlint util-linux)" >&2; exit 1; fi
	echo "lint: skipped, missing$missing" >&2
	exit 0
fi
deb=$(ls dist/stem_*.deb)
rpm=$(ls dist/stem-*.rpm)

work=$(mktemp -d /tmp/stem-lint.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/home"
real_cpio=$(command -v cpio)
printf '#!/bin/sh\nexec %s --no-absolute-filenames "$@"\n' "$real_cpio" >"$work/bin/cpio"
chmod 0755 "$work/bin/cpio" "$work"
cp "$deb" "$rpm" packaging/rpmlint.toml "$work/"
chown -R nobody:nogroup "$work"

as_nobody() {
	if [ "$(id -u)" -eq 0 ]; then
		setpriv --reuid=nobody --regid=nogroup --clear-groups \
			env -i HOME="$work/home" PATH="$work/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 "$@"
	else
		env HOME="$work/home" PATH="$work/bin:$PATH" "$@"
	fi
}

echo "== lintian $(basename "$deb")"
(cd "$work" && as_nobody lintian --pedantic --fail-on error,warning "$(basename "$deb")")
overridden=$(cd "$work" && as_nobody lintian --pedantic --show-overrides "$(basename "$deb")" 2>/dev/null | grep -c '^O:' || true)
echo "lintian: clean ($overridden documented overrides, packaging/lintian-overrides)"

echo "== rpmlint $(basename "$rpm")"
out=$(cd "$work" && as_nobody rpmlint --config rpmlint.toml "$(basename "$rpm")" 2>&1) || true
echo "$out"
if ! echo "$out" | grep -Eq '[0-9]+ packages? and [0-9]+ specfiles? checked; 0 errors'; then
	echo "rpmlint: errors (or no summary line)" >&2
	exit 1
fi
echo "rpmlint: no errors"
