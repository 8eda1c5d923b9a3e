#!/usr/bin/env bash
# Install the offline OHIF viewer stack used by `dsm-node view` and tests/viewer.
#
#   scripts/install-viewer.sh            # into .cache/ohif (or $DSM_OHIF_CACHE)
#
# Idempotent: does nothing when the pinned versions are already unpacked.
# Needs: node 20+ and npm (registry access only on the first run). Debian packages needed at run
# time (not installed here): orthanc orthanc-dicomweb chromium iproute2 util-linux.
set -euo pipefail

OHIF_VERSION="3.13.2"
PLAYWRIGHT_VERSION="1.65.1"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DSM_OHIF_CACHE:-$REPO/.cache/ohif}"
STAMP="$CACHE/.installed"
WANT="ohif=$OHIF_VERSION playwright-core=$PLAYWRIGHT_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -f "$CACHE/app/dist/index.html" \
      && -f "$CACHE/node_modules/playwright-core/package.json" ]]; then
  echo "viewer stack already installed in $CACHE ($WANT)"
  exit 0
fi

command -v npm >/dev/null || { echo "npm is required (Node 20+)" >&2; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if (( node_major < 20 )); then
  echo "Node $node_major found; playwright-core $PLAYWRIGHT_VERSION needs Node 20+" >&2
  exit 1
fi
mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetching @ohif/app@$OHIF_VERSION (prebuilt dist, ~50 MB) ..."
( cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null )
tarball="$(ls "$tmp"/ohif-app-*.tgz)"
mkdir -p "$tmp/unpacked"
tar -xzf "$tarball" -C "$tmp/unpacked"
[[ -f "$tmp/unpacked/package/dist/index.html" ]] || { echo "unexpected tarball layout" >&2; exit 1; }
# Keep the pristine app-config.js: the harness writes its own per run into a served overlay.
rm -rf "$CACHE/app"
mv "$tmp/unpacked/package" "$CACHE/app"

echo "installing playwright-core@$PLAYWRIGHT_VERSION (driver only; uses /usr/bin/chromium) ..."
cat > "$CACHE/package.json" <<JSON
{"name": "dsm-node-viewer-harness", "private": true,
 "dependencies": {"playwright-core": "$PLAYWRIGHT_VERSION"}}
JSON
( cd "$CACHE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
    --ignore-scripts >/dev/null )

echo "$WANT" > "$STAMP"
echo "viewer stack installed in $CACHE ($WANT)"
