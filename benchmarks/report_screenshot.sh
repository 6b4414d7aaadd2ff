#!/usr/bin/env bash
# Renders a `clipsr score --report` page in headless Chromium (Debian's
# `chromium` package) and writes a screenshot, to check the page as a person sees it.
#   bash benchmarks/report_screenshot.sh SR_DIR HR_DIR SCALE SUFFIX OUT.png
set -euo pipefail
sr=$1 hr=$2 scale=$3 suffix=$4 png=$5
rep=$(mktemp -d)
clipsr score "$sr" --ref "$hr" --scale "$scale" --suffix "$suffix" --crop-to-common --report "$rep"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=1400,1000 \
  --screenshot="$png" "file://$rep/index.html" 2>/dev/null
echo "screenshot: $png"
