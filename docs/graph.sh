#!/usr/bin/env bash
# Draws docs/curl.svg, the picture in the README: curl's closure on this machine, as
# `minify analyze --format svg` draws it (Graphviz's dot must be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
minify=.venv/bin/minify
[ -x "$minify" ] || minify=minify
"$minify" analyze /usr/bin/curl --format svg > docs/curl.svg
echo "docs/curl.svg: $(stat -c %s docs/curl.svg) bytes"
