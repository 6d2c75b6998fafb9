#!/usr/bin/env bash
# Keep the small outputs of an `unlearn run` (what scripts/experiment-table.py reads: metrics,
# relearning curves, manifests, training logs, stage records; no weights) under results/, so a
# finished protocol run's tables print again without the run:
#   scripts/keep-results.sh runs/protocol-sports-16-test results/protocol-sports-16-test
set -euo pipefail
src=${1:?usage: keep-results.sh RUN_DIR DEST}
dst=${2:?usage: keep-results.sh RUN_DIR DEST}
[ -d "$src" ] || { echo "keep-results.sh: $src is not a directory" >&2; exit 1; }
tmp="$dst.tmp.$$"
rm -rf "$tmp"
(cd "$src" && find eval relearn unlearn -maxdepth 2 -type f \( -name metrics.json \
  -o -name relearn.json -o -name stage.json -o -name manifest.json -o -name train.jsonl \)) |
  while IFS= read -r f; do
    mkdir -p "$tmp/$(dirname "$f")"
    cp "$src/$f" "$tmp/$f"
  done
rm -rf "$dst"
mv "$tmp" "$dst"
du -sh "$dst"
