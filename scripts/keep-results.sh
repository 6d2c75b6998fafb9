#!/usr/bin/env bash
# Copy what the tables read out of an experiment's output folder: its JSON and JSONL files
# (measurements, manifests, training logs, localizations), not models or checkpoints, keeping
# their paths, so that the tables can be made again from the copy, e.g.
#   scripts/keep-results.sh runs/wmdp-qwen results/wmdp-qwen && python3 scripts/wmdp-table.py results/wmdp-qwen
# DEST is replaced as a whole (written beside it first, then moved into place).
set -euo pipefail
src=${1:?usage: keep-results.sh SRC DEST}
dst=${2:?usage: keep-results.sh SRC DEST}
[ -d "$src" ] || { echo "keep-results.sh: $src is not a folder" >&2; exit 1; }
tmp="$dst.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
(cd "$src" && find . -type d -name checkpoint -prune -o -type f \( -name '*.json' -o -name '*.jsonl' \) -size -4M -print) |
  while read -r f; do
    mkdir -p "$tmp/$(dirname "$f")"
    cp "$src/$f" "$tmp/$f"
  done
rm -rf "$dst"
mv "$tmp" "$dst"
echo "kept $(find "$dst" -type f | wc -l) files ($(du -sh "$dst" | cut -f1)) in $dst" >&2
