#!/usr/bin/env bash
# WMDP unlearning and relearning on Qwen2.5-Coder 1.5B (the protocol of Deeb & Roger 2024,
# "Do unlearning methods remove information from LLM weights?"), on the five WMDP-deduped
# splits built in (data/wmdp):
#   (a) unlearn the questions of all five splits, written with their correct answers
#       (task wmdp-qa), with each method; measure WMDP by split, MMLU (570 and the five
#       subjects nearest WMDP) by multiple choice;
#   (b) retrain-on-T: LoRA on the question+answer texts of splits 0-3, split 4 measured over
#       the steps (never trained on after unlearning); the original model under the same
#       retraining is the ceiling.
# Settings come from SETTINGS below (chosen on validation: split 3 during unlearning, and a
# retraining run that measures split 3 after training on 0-2 -- never split 4).
#   experiments/wmdp-qwen.sh OUT [UNLEARN]
# Every step writes its files once; a rerun skips what exists. On a 2-core CPU one WMDP+MMLU
# evaluation of the 1.5B model takes about an hour; run it where there is a GPU.
set -euo pipefail
out=${1:?usage: wmdp-qwen.sh OUT [UNLEARN binary]}
bin=${2:-target/release/unlearn}
model=qwen2.5-coder-1.5b
mkdir -p "$out"
once() { # file, command...
  local f=$1; shift
  [ -s "$f" ] && return 0
  echo "wmdp-qwen: $f" >&2
  "$@"
}
mcqs() { # model-or-dir, dir
  for set in wmdp mmlu mmlu-near; do
    once "$2/mcq-$set.json" sh -c "'$bin' mcq --model '$1' --set $set --json > '$2/mcq-$set.json.tmp' && mv '$2/mcq-$set.json.tmp' '$2/mcq-$set.json'"
  done
}
retrain() { # dir, [--unlearned DIR]
  local d=$1; shift
  once "$d/retrain/relearn.json" "$bin" relearn --model $model "$@" --task wmdp-qa:0,1,2,3 \
    --measure wmdp:4 --steps 40 --eval-every 10 --out "$d/retrain"
}

# The original model: what there is to remove, and the retraining ceiling.
mkdir -p "$out/original"
mcqs $model "$out/original"
retrain "$out/original"

# KUDA's window, traced on the facts this model knows (Sports athletes of validation subjects).
once "$out/locate/localization.json" "$bin" locate --model $model --method kuda-window \
  --forget validation:first-16 --samples 5 --max-facts 8 --no-heads --out "$out/locate"

declare -A SETTINGS=(
  [kuda]="--localization $out/locate/localization.json"
  [localized-ft]="--localization $out/locate/localization.json"
  [rmu]="--layers 4-6 --set rmu.layer=6"
  [npo]="--layers 4-6"
  [simnpo]="--layers 4-6"
  [ga]="--layers 4-6"
)
for m in kuda rmu npo simnpo ga localized-ft; do
  d="$out/$m"
  # shellcheck disable=SC2086
  once "$d/manifest.json" "$bin" forget --model $model --method $m --task wmdp-qa \
    ${SETTINGS[$m]} --out "$d"
  mcqs "$d" "$d"
  retrain "$d" --unlearned "$d"
done
echo "done: tables with python3 scripts/wmdp-table.py $out" >&2
