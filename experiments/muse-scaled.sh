#!/usr/bin/env bash
# MUSE-News scaled to a CPU, learn then unlearn (docs/results.md, “Learn, then unlearn”).
# Gemma 3 270M never saw MUSE's post-2023 BBC articles, so it first learns 16 KnowMem questions
# about forget articles (every block weight, lr 2e-5, batch 8, 40 steps, WikiText CE beside it);
# each method then forgets all 16 on MLPs 2-4 at its defaults (KUDA with rep_layer 12, beta 10),
# and `unlearn muse` measures KnowMem, VerbMem and Min-K% (PrivLeak against the base model,
# which never saw the texts). One seed (0); 16 questions per split.
#   experiments/muse-scaled.sh OUT [UNLEARN binary]
# Table: the `unlearn muse` table printed for each method (OUT/muse-METHOD/metrics.json).
# About 8 minutes to learn and 2-4 minutes per method on 2 cores; finished steps are skipped.
# SMOKE=1 runs every command with 2 training steps and 4 items (checks the pipeline, not numbers).
set -euo pipefail
out=${1:?usage: muse-scaled.sh OUT [UNLEARN binary]}
bin=${2:-target/release/unlearn}
n=16
learn_steps=()
forget_steps=()
if [ "${SMOKE:-0}" = 1 ]; then
  n=4
  learn_steps=(--steps 2)
  forget_steps=(--steps 2)
fi
mkdir -p "$out"
python3 - "$n" "$out/qa.json" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
qa = json.load(open("data/muse/news/knowmem/forget_qa.json"))[:n]
json.dump(qa, open(path, "w"), ensure_ascii=False, indent=1)
PY
[ -s "$out/learned/manifest.json" ] || "$bin" learn --data "$out/qa.json" "${learn_steps[@]}" \
  --out "$out/learned"
[ -s "$out/muse-learned/metrics.json" ] || "$bin" muse --n $n --model "$out/learned" \
  --retrained gemma3-270m --out "$out/muse-learned"
for m in kuda ga npo simnpo rmu; do
  extra=()
  [ "$m" = kuda ] && extra=(--set kuda.rep_layer=12 --set kuda.beta=10)
  [ -s "$out/$m/manifest.json" ] || "$bin" forget --model "$out/learned" \
    --task "$out/learned/facts.jsonl" --known 'p>=0.0' --forget first-$n --layers 2-4 --no-eval \
    --method $m "${extra[@]}" "${forget_steps[@]}" --out "$out/$m"
  [ -s "$out/muse-$m/metrics.json" ] || "$bin" muse --n $n --model "$out/learned" \
    --unlearned "$out/$m" --retrained gemma3-270m --out "$out/muse-$m"
done
