#!/usr/bin/env bash
# How the `kuda-sports` preset was chosen, on the VALIDATION split only, and its report on
# the TEST split. Gemma 3 270M, Sports:
#   1. KUDA's window traced on 16 validation athletes (MLPs 3-5);
#   2. candidates on those 16 validation athletes (74 validation athletes held out), seeds 0-2:
#      the defaults, the strict projection, strict with beta 10, and the preset's settings;
#      rule fixed before the runs: the lowest mean forget accuracy whose held-out accuracy stays
#      >= 95 % and WikiText perplexity within +5 %;
#   3. the chosen preset and the defaults on 16 TEST athletes, seeds 0-2 (reported only).
#   experiments/presets-sports-validation.sh OUT [UNLEARN binary]
# Tables: scripts/experiment-table.py --forget-runs OUT/validation/*-seed*  (and OUT/test/*)
# About 3-4 minutes per run on 2 cores; each run is skipped when its metrics.json exists.
set -euo pipefail
out=${1:?usage: presets-sports-validation.sh OUT [UNLEARN binary]}
bin=${2:-target/release/unlearn}
loc=$out/locate/localization.json
[ -s "$loc" ] || "$bin" locate --method kuda-window --forget validation:first-16 --samples 5 \
  --max-facts 8 --out "$out/locate"
declare -A CANDIDATES=(
  [default]=""
  [strict]="--set kuda.projection=strict"
  [strict-beta10]="--set kuda.projection=strict --set kuda.beta=10"
  [kuda-sports]="--set kuda.beta=0.3 --set kuda.center=known --set kuda.focus=2 --set retain_namesakes=true --set retain_unknown_facts=2000 --set kuda.rep_layer=12"
)
for c in default strict strict-beta10 kuda-sports; do
  for s in 0 1 2; do
    d=$out/validation/$c-seed$s
    # shellcheck disable=SC2086
    [ -s "$d/metrics.json" ] || "$bin" forget --method kuda --forget validation:first-16 \
      --localization "$loc" --seed $s ${CANDIDATES[$c]} --out "$d"
  done
done
for s in 0 1 2; do
  d=$out/test/kuda-sports-seed$s
  [ -s "$d/metrics.json" ] || "$bin" forget --preset kuda-sports --forget test:first-16 --seed $s --out "$d"
  d=$out/test/default-seed$s
  [ -s "$d/metrics.json" ] || "$bin" forget --method kuda --forget test:first-16 --localization "$loc" \
    --seed $s --out "$d"
done
