#!/usr/bin/env bash
# TOFU scaled to a CPU (docs/results.md, “TOFU, scaled”): forget01 (2 fictitious authors, 40
# QA) and the first 40 retain QA are learned by Gemma 3 270M (every block weight, lr 2e-5,
# batch 16, 40 steps = 8 epochs, WikiText CE beside), the retain QA alone the same number of
# epochs (20 steps) for the retain-only reference; each method then forgets the 40 forget QA on
# MLPs 2-4 at its defaults (KUDA with rep_layer 12, beta 10), and `unlearn tofu eval` measures
# forget quality (KS test of truth ratios against the retain-only model) and model utility.
# One seed (0).
#   experiments/tofu-scaled.sh OUT [UNLEARN binary]
# Table: the one `unlearn tofu eval` prints (OUT/eval/metrics.json).
# About 30 minutes to learn both models and 45 minutes for the evaluation on 2 cores.
# SMOKE=1 runs every command with 2 training steps and 4 general questions.
set -euo pipefail
out=${1:?usage: tofu-scaled.sh OUT [UNLEARN binary]}
bin=${2:-target/release/unlearn}
full_steps=40
retain_steps=20
forget_steps=()
general=100
if [ "${SMOKE:-0}" = 1 ]; then
  full_steps=2
  retain_steps=2
  forget_steps=(--steps 2)
  general=4
fi
[ -s "$out/learn-full.jsonl" ] || "$bin" tofu data --out "$out"
[ -s "$out/full/manifest.json" ] || "$bin" learn --data "$out/learn-full.jsonl" \
  --set steps=$full_steps --set batch_size=16 --out "$out/full"
[ -s "$out/retain/manifest.json" ] || "$bin" learn --data "$out/learn-retain.jsonl" \
  --set steps=$retain_steps --set batch_size=16 --out "$out/retain"
unlearned=()
for m in kuda npo ga simnpo rmu; do
  extra=()
  [ "$m" = kuda ] && extra=(--set kuda.rep_layer=12 --set kuda.beta=10)
  [ -s "$out/$m/manifest.json" ] || "$bin" forget --model "$out/full" \
    --task "$out/full/facts.jsonl" --known 'p>=0.0' --forget first-40 --layers 2-4 --no-eval \
    --method $m "${extra[@]}" "${forget_steps[@]}" --out "$out/$m"
  unlearned+=(--unlearned "$out/$m")
done
[ -s "$out/eval/metrics.json" ] || "$bin" tofu eval --model "$out/full" \
  --retain-model "$out/retain" "${unlearned[@]}" --general $general --out "$out/eval"
