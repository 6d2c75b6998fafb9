#!/bin/sh
# Render an unlearn HTML report in headless Chromium and save a screenshot, to check that the
# page displays with nothing fetched. Needs Debian's `chromium` package (apt-get install chromium).
# Usage: scripts/screenshot-report.sh runs/demo/report.html report.png
set -eu
report=${1:?usage: $0 REPORT.html OUT.png}
out=${2:-report.png}
chromium --headless --no-sandbox --disable-gpu --window-size=1100,${HEIGHT:-3000} \
  --screenshot="$out" "file://$(realpath "$report")" 2>/dev/null
echo "wrote $out"
