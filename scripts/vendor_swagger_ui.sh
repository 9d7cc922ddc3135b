#!/usr/bin/env bash
# Refresh the local copy of Swagger UI that /docs serves, from the npm registry.
#
# /docs must work offline and behind firewalls, so the page FastAPI renders
# loads Swagger UI from the API's own origin (/dashboard/vendor/), never
# from a CDN. `npm pack` checks the tarball's integrity against the
# registry; the bundle and stylesheet are copied unchanged, with the
# package's Apache-2.0 LICENSE and NOTICE and the bundle's third-party
# licence list next to them. Needs npm; commit the result.
#
#   bash scripts/vendor_swagger_ui.sh          # the latest 5.x
#   bash scripts/vendor_swagger_ui.sh 5.35.0   # a given version
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${1:-5}"
DEST=api/dashboard/static/vendor
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

command -v npm >/dev/null 2>&1 || { echo "vendor_swagger_ui: npm is needed" >&2; exit 1; }
tarball="$(cd "$WORK" && npm pack --silent "swagger-ui-dist@$VERSION" | tail -n 1)"
tar -xzf "$WORK/$tarball" -C "$WORK"
grep -q 'Apache License' "$WORK/package/LICENSE" || { echo "vendor_swagger_ui: unexpected LICENSE" >&2; exit 1; }

mkdir -p "$DEST"
cp "$WORK/package/swagger-ui-bundle.js" "$DEST/swagger-ui-bundle.js"
cp "$WORK/package/swagger-ui-bundle.js.LICENSE.txt" "$DEST/swagger-ui-bundle.js.LICENSE.txt"
# The stylesheet without its source-map comment: the map is not vendored.
sed '/sourceMappingURL=/d' "$WORK/package/swagger-ui.css" > "$DEST/swagger-ui.css"
cp "$WORK/package/LICENSE" "$DEST/swagger-ui-LICENSE"
cp "$WORK/package/NOTICE" "$DEST/swagger-ui-NOTICE"
version="$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$WORK/package/package.json")"
echo "vendor_swagger_ui: swagger-ui-dist $version -> $DEST/swagger-ui-bundle.js, swagger-ui.css"
