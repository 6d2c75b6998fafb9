#!/usr/bin/env bash
# What a model knows: facts of the built-in tasks and multiple-choice accuracy (MMLU 570, the
# MMLU subjects nearest WMDP, WMDP by split), zero- and 5-shot, and zero-shot inside the
# model's chat turn (`--chat`), as JSON files under OUT.
#   scripts/census.sh MODEL OUT [UNLEARN]      e.g. scripts/census.sh qwen2.5-coder-1.5b runs/census/1.5b
# Each file is written once; a rerun skips files that exist. STEPS="wmdp-0shot known-sports"
# runs only those steps. Make the table with
#   python3 scripts/census-table.py OUT...
set -euo pipefail
model=${1:?usage: census.sh MODEL OUT [UNLEARN binary]}
out=${2:?usage: census.sh MODEL OUT [UNLEARN binary]}
bin=${3:-target/release/unlearn}
mkdir -p "$out"
step() { # name, command...
  local f="$out/$1.json"; shift
  [ -s "$f" ] && return 0
  [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $(basename "$f" .json) "* ]] && return 0
  echo "census: $model $f" >&2
  "$@" --json > "$f.tmp" && mv "$f.tmp" "$f"
}
step mmlu-0shot      "$bin" mcq --model "$model" --set mmlu
step mmlu-5shot      "$bin" mcq --model "$model" --set mmlu --shots 5
step wmdp-0shot      "$bin" mcq --model "$model" --set wmdp
step mmlu-near-0shot "$bin" mcq --model "$model" --set mmlu-near
step mmlu-near-5shot "$bin" mcq --model "$model" --set mmlu-near --shots 5
step known-sports      "$bin" known --model "$model" --task sports
step known-counterfact "$bin" known --model "$model" --task counterfact
step mmlu-0shot-chat   "$bin" mcq --model "$model" --set mmlu --chat
step wmdp-0shot-chat   "$bin" mcq --model "$model" --set wmdp --chat
