#!/usr/bin/env bash
# Refresh the dashboard's local copy of Chart.js from the npm registry.
#
# The dashboard loads Chart.js from our own origin, never from a CDN: it
# works offline and behind firewalls, and its Content-Security-Policy allows
# scripts from 'self' only. `npm pack` checks the tarball's integrity against
# the registry; the file is copied unchanged, its MIT license header included,
# with the package's LICENSE.md next to it. Needs npm; commit the result.
#
#   bash scripts/vendor_chartjs.sh          # the latest 4.x
#   bash scripts/vendor_chartjs.sh 4.6.1    # a given version
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${1:-4}"
DEST=api/dashboard/static/vendor
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

command -v npm >/dev/null 2>&1 || { echo "vendor_chartjs: npm is needed" >&2; exit 1; }
tarball="$(cd "$WORK" && npm pack --silent "chart.js@$VERSION" | tail -n 1)"
tar -xzf "$WORK/$tarball" -C "$WORK"
grep -q 'Released under the MIT License' <(head -n 6 "$WORK/package/dist/chart.umd.js") \
    || { echo "vendor_chartjs: no license header in chart.umd.js" >&2; exit 1; }

mkdir -p "$DEST"
cp "$WORK/package/dist/chart.umd.js" "$DEST/chart.umd.js"
cp "$WORK/package/LICENSE.md" "$DEST/chart.js-LICENSE.md"
echo "vendor_chartjs: $(sed -n 's/^ \* \(Chart.js v.*\)/\1/p' "$DEST/chart.umd.js") -> $DEST/chart.umd.js"
