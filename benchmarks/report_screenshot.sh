#!/usr/bin/env bash
# The `clipsr score --report` page as a person sees it: the editability examples
# upscaled by the bundled demo model (three captions per image), scored against
# their HR with --report, rendered in headless Chromium (Debian's `chromium`
# package) and written as a screenshot (the README's docs/report.png).
#   bash benchmarks/report_screenshot.sh [OUT.png]
set -euo pipefail
png=${1:-docs/report.png}
work=$(mktemp -d)
ex=examples/editability
clipsr upscale "$ex/lr" --captions "$ex/captions.json" --weights clipsr-demo-x8 -o "$work/sr" -q
ex=$PWD/$ex
(cd "$work" && clipsr score sr --ref "$ex/hr" --scale 8 --captions "$ex/captions.json" --report report > /dev/null)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$work/profile" --window-size=1400,1000 \
  --hide-scrollbars --screenshot="$png" "file://$work/report/index.html" 2>/dev/null
python3 -c "from PIL import Image; Image.open('$png').convert('P', palette=Image.ADAPTIVE, colors=128).save('$png', optimize=True)"
echo "screenshot: $png"
