#!/usr/bin/env bash
# Builds dist/stem_VERSION_ARCH.deb and dist/stem-VERSION.ARCH.rpm with nfpm
# (make package). Inputs go to dist/build/ (ignored by git), which nfpm.yaml reads:
#   stem        static (CGO_ENABLED=0), stripped, version-stamped binary
#   units/      `stem units generate --unit-dir /lib/systemd/system`
#   routing.yaml  `stem routing dump --sample`
#   docs/       man pages (gzipped) and completions from internal/gendocs
# Environment: VERSION (stamped into the binary), STEM_PKG_VERSION (the
# package version), GOARCH (default: the host's), NFPM (the nfpm binary).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
export GOARCH=${GOARCH:-$($GO env GOARCH)}
export STEM_PKG_VERSION=${STEM_PKG_VERSION:-$(packaging/version.sh)}
NFPM=${NFPM:-$(command -v nfpm || echo "$HOME/go/bin/nfpm")}
if [ ! -x "$NFPM" ]; then
	echo "nfpm not found: GOFLAGS= go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2" >&2
	exit 1
fi
# The commit's date: the same commit gives the same man pages.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

out=dist/build
rm -rf "$out"
mkdir -p "$out" dist
CGO_ENABLED=0 $GO build -trimpath -ldflags "-s -w -X github.com/stemhq/stem/cli.Version=$VERSION" -o "$out/stem" ./cmd/stem
"$out/stem" units generate --unit-dir /lib/systemd/system --output "$out/units"
"$out/stem" routing dump --sample >"$out/routing.yaml"
$GO run ./internal/gendocs -out "$out/docs" -version "$VERSION"
gzip -9n "$out"/docs/man/*.1

# nfpm.yaml ends with its contents list; add the man pages to it.
cp nfpm.yaml "$out/nfpm.yaml"
for page in "$out"/docs/man/*.1.gz; do
	dst=/usr/share/man/man1/$(basename "$page")
	printf '  - {src: %s, dst: %s, packager: deb, file_info: {mode: 0644}}\n' "$page" "$dst" >>"$out/nfpm.yaml"
	printf '  - {src: %s, dst: %s, packager: rpm, type: doc, file_info: {mode: 0644}}\n' "$page" "$dst" >>"$out/nfpm.yaml"
done

rm -f dist/stem_*.deb dist/stem-*.rpm
"$NFPM" package --config "$out/nfpm.yaml" --packager deb --target dist/
"$NFPM" package --config "$out/nfpm.yaml" --packager rpm --target dist/
ls -l dist/
