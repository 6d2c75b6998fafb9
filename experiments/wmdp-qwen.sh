#!/usr/bin/env bash
# WMDP unlearning and relearning on Qwen2.5-Coder 1.5B (the protocol of Deeb & Roger 2024,
# "Do unlearning methods remove information from LLM weights?"), on the five WMDP-deduped
# splits built in (data/wmdp). Every method unlearns the questions of all five splits, written
# with their correct answers (task wmdp-qa).
#
# 1. Validation: the settings are chosen here, reading neither split 4 nor any reported MMLU
#    question. Each method runs at half, one and two times its default learning rate
#    (LR_FACTORS); each run is measured on WMDP split 3, on MMLU-val (260 MMLU questions that
#    no table reports: `unlearn mcq --set mmlu-val`) and by WikiText-2 perplexity (held-out
#    half). The rule, fixed before the runs: per method, the candidate with the lowest split-3
#    accuracy whose MMLU-val accuracy stays within 2 points of the original model's and whose
#    perplexity stays within +5 %; when none qualifies, the one with the highest MMLU-val
#    accuracy among those within +5 % perplexity (else the lowest perplexity).
#    `python3 scripts/wmdp-table.py --choose OUT` applies it, prints the validation table and
#    writes OUT/chosen.json. The chosen run of each method (and the original model) is also
#    retrained on splits 0-2 and measured on split 3, the validation counterpart of (b); no
#    choice reads it, so the unlearned runs' ones come last.
# 2. The reported tables, on the chosen runs (unlearning is deterministic: the chosen run is
#    the model the tables measure):
#    (a) WMDP by split, MMLU (570) and the five subjects nearest WMDP; perplexity from (1);
#    (b) retrain-on-T: LoRA on the question+answer texts of splits 0-3, and full fine-tuning of
#        the tensors the method updated, split 4 measured over the steps (never trained on
#        after unlearning); the original model under the same retraining is the ceiling (its
#        full fine-tuning on MLP layers 4-6, the baselines' layers: LAYERS).
#   experiments/wmdp-qwen.sh OUT [UNLEARN]
#   python3 scripts/wmdp-table.py OUT
# Every step writes its files once; a rerun skips what exists, so an interrupted run goes on
# where it stopped. Only the JSON has to outlive a sitting (scripts/keep-results.sh OUT DEST, and
# the copy as OUT next time): a step whose files are there is not made again, and a chosen model
# whose tensors are gone is made again by the same seeded command before what still needs it.
# PHASE=validation stops after the validation sweep and the choice (while a method's sweep is
# still growing, so that no reported number is measured of a run that may not be chosen).
# A run is named METHOD[.VARIANT]-lrFACTOR: a variant is a named change of the method's
# protocol settings (VARIANT below), a candidate of its method like another learning rate; the
# rule chooses among all of a method's runs. RUNS="kuda.text1024-lr1 rmu-lr0.5" makes exactly
# those validation runs instead of every method at every LR_FACTORS (a search that goes on
# from what the earlier runs showed; docs/results.md says which runs were made and why).
# METHODS="rmu npo" limits the methods (a later run with more methods adds
# theirs; the choice of a method does not depend on the others); MODEL and LAYERS (the
# baselines' MLP layers, RMU steering at the last) change the model (MODEL=random:tiny
# LAYERS=1-2 METHODS="rmu ga" runs the whole script in minutes, to check it). JOBS=2 runs two
# independent steps at a time (each on cores/JOBS threads unless UNLEARN_THREADS is set): on a
# 2-core CPU, two one-thread steps get through about 1.6 times the work of one two-thread step
# (README, WMDP). Whatever JOBS, at most FORGETS (default 1) forget runs go at a time, across
# every run of the script on OUT: a forget of the 1.5B model needs up to 13 GB, two of them did
# not fit in 24 GB side by side, while a measurement beside one (MCQ 7.6 GB, retraining 8.3 GB)
# does (README, Memory). On a 24 GB machine JOBS=2 then keeps both cores busy.
# A step is made under a lock (OUT/locks), so two runs of the script on one OUT never make the
# same file twice. On a 2-core CPU one full WMDP + MMLU evaluation of the 1.5B model takes
# about an hour, a 40-step retraining about an hour, and the whole protocol more than a day;
# run it where there is a GPU. UNLEARN_WEIGHTS=gguf holds the model's matrices as the GGUF
# file's blocks: the numbers of f32 storage bit for bit (README, Precision) with 5.3 GB less per
# step, so that FORGETS=2 (two forget runs side by side) fits in 24 GB.
set -euo pipefail
out=${1:?usage: wmdp-qwen.sh OUT [UNLEARN binary]}
bin=${2:-target/release/unlearn}
model=${MODEL:-qwen2.5-coder-1.5b}
layers=${LAYERS:-4-6}
methods=${METHODS:-kuda rmu npo simnpo ga localized-ft}
lr_factors=${LR_FACTORS:-0.5 1 2}
jobs_max=${JOBS:-1}
forgets_max=${FORGETS:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$jobs_max" -gt 1 ] && [ -z "${UNLEARN_THREADS:-}" ]; then
  t=$(( $(nproc) / jobs_max ))
  export UNLEARN_THREADS=$(( t > 0 ? t : 1 ))
fi
mkdir -p "$out/locks"
once() { # file, command...: make the file unless it exists, one maker at a time
  local f=$1; shift
  [ -s "$f" ] && return 0
  local lock="$out/locks/$(printf '%s' "${f#"$out"/}" | tr '/' '_').lock"
  exec {fd}>"$lock"
  flock "$fd"
  if [ ! -s "$f" ]; then
    echo "wmdp-qwen: $f" >&2
    "$@"
  fi
  exec {fd}>&-
}
forget_slot() { # command...: run it holding one of the FORGETS slots (OUT/locks/forget-K.slot)
  local k fd
  while :; do
    for k in $(seq 1 "$forgets_max"); do
      exec {fd}>"$out/locks/forget-$k.slot"
      if flock -n "$fd"; then
        "$@"
        exec {fd}>&-
        return 0
      fi
      exec {fd}>&-
    done
    sleep 5
  done
}
running=0
spawn() { # command...: run it beside the others, at most JOBS at a time
  if [ "$jobs_max" -le 1 ]; then "$@"; return; fi
  while [ "$running" -ge "$jobs_max" ]; do reap; done
  "$@" &
  running=$((running + 1))
}
reap() { # wait for one step; a failed one stops the run (and the steps beside it)
  if ! wait -n; then
    echo "wmdp-qwen: a step failed; stopping" >&2
    kill $(jobs -p) 2>/dev/null || true
    exit 1
  fi
  running=$((running - 1))
}
drain() { while [ "$running" -gt 0 ]; do reap; done; }
mcq() { # model-or-dir, dir, set
  local f="$2/mcq-${3//:/-}.json"
  once "$f" sh -c "'$bin' mcq --model '$1' --set $3 --json > '$f.tmp' && mv '$f.tmp' '$f'"
}
mcqs() { # model-or-dir, dir, set...
  local m=$1 d=$2; shift 2
  for set in "$@"; do mcq "$m" "$d" "$set"; done
}
retrain() { # out dir, train splits, measured split, [--unlearned DIR] [--full] [--layers L]
  local d=$1 train=$2 measure=$3; shift 3
  once "$d/relearn.json" "$bin" relearn --model $model "$@" --task "wmdp-qa:$train" \
    --measure "wmdp:$measure" --steps 40 --eval-every 10 --out "$d"
}
default_lr() { # method: its learning rate from the config types
  "$bin" forget --method "$1" --print-config |
    awk '/^\[/ {s = $0} s == "[optim]" && $1 == "lr" {print $3}'
}
needs_window() { [[ "$1" == kuda || "$1" == localized-ft ]]; }
# KUDA's window, traced on the facts this model knows (Sports athletes of validation subjects).
find_window() {
  once "$out/locate/localization.json" "$bin" locate --model $model --method kuda-window \
    --forget validation:first-16 --samples 5 --max-facts 8 --no-heads --out "$out/locate"
}
# KUDA and RMU run with sink=drop: each sequence's first row (on this model the attention sink,
# 174 times the median row norm at layer 6) is no forget row and sets no scale, while the retain
# MSEs still hold it where it was. With the sink in the scales, RMU's steering norm came out 5.8
# times and the retain MSEs' normaliser some 400 times (estimated from the row norms) what they
# were meant to be, and every run broke the model (perplexity +21 % to +307 %; RMU's MCQ answers
# all "A"). Those runs are kept under OUT/rmu-sink-kept, OUT/rmu-sink-in-retain-scale and
# OUT/kuda-sink-in-retain-scale.
declare -A WHERE=(
  [kuda]="--localization $out/locate/localization.json --set sink=drop"
  [localized-ft]="--localization $out/locate/localization.json"
  [rmu]="--layers $layers --set rmu.layer=${layers##*-} --set sink=drop"
  [npo]="--layers $layers"
  [simnpo]="--layers $layers"
  [ga]="--layers $layers"
)
# Every method retains MMLU questions that no table scores, written in the forget passages' form
# ("Question: …\nAnswer: …", corpus_retain=mmlu-qa; data/mmlu/SOURCE.txt), as Deeb & Roger keep
# a retain set of other questions beside the forget facts. With WikiText as the retain data, RMU
# at its default rate (sink dropped) kept perplexity within 5 % but steered the question-and-answer
# form itself: MMLU-val fell from 46.2 to 21.9 %, 231 of 260 answers "A" (OUT/rmu-wikitext-retain).
retain="--set corpus_retain=mmlu-qa"
# Variants (METHOD.NAME): settings added to the method's own.
# kuda.text1024: the key statistics read 1,024 WikiText chunks of 64 tokens instead of 64. With
# 64, the projectors of MLPs 3-5 let through 0.1 % of their key data's energy but 3.6-7.3 % of
# held-out text's; with 1,024, 0.05-0.08 % and 0.13-0.41 % (docs/results.md).
declare -A VARIANT=(
  [kuda.text1024]="--set kuda.key_text_chunks=1024"
)
run_method() { local b=${1%-lr*}; echo "${b%%.*}"; } # name: its method
run_variant() { # name: its variant's settings (none for a plain METHOD-lrFACTOR)
  local b=${1%-lr*}
  [[ "$b" == *.* ]] || return 0
  [ -n "${VARIANT[$b]+x}" ] || { echo "wmdp-qwen: $1: no variant $b (VARIANT in $0)" >&2; exit 2; }
  echo "${VARIANT[$b]}"
}
unlearned() { # name: the model OUT/sweep/NAME (METHOD[.VARIANT]-lrFACTOR), made unless its
  # tensors are there; made again when only its JSON was kept (scripts/keep-results.sh), by the
  # same seeded command as the run the validation chose (the same up to float rounding where
  # the thread count differs)
  local m f=${1##*-lr} d="$out/sweep/$1" base lr v
  m=$(run_method "$1")
  v=$(run_variant "$1")
  if needs_window "$m"; then find_window; fi
  [ -s "$d/changed.safetensors" ] || rm -f "$d/manifest.json"
  base=$(default_lr "$m")
  lr=$(python3 -c "print(f'{$base * $f:.3g}')")
  # shellcheck disable=SC2086
  once "$d/manifest.json" forget_slot "$bin" forget --model $model --method "$m" --task wmdp-qa \
    ${WHERE[$m]} $retain $v --set "optim.lr=$lr" --out "$d"
}
all_made() { # file...: whether every one is there
  local f
  for f in "$@"; do [ -s "$f" ] || return 1; done
}
sweep_run() { # name: unlearn, then measure on validation
  local n=$1
  local d="$out/sweep/$n" e="$out/measured/$n"
  all_made "$d/metrics.json" "$e/mcq-wmdp-3.json" "$e/mcq-mmlu-val.json" && return 0
  unlearned "$n"
  mkdir -p "$e"
  mcqs "$d" "$e" wmdp:3 mmlu-val
}
# The original model: what there is to remove, and the retraining ceilings.
# Unlearned models go to OUT/sweep/NAME, what is measured of them to OUT/measured/NAME.
o="$out/measured/original"
mkdir -p "$o"

# 1. Validation sweep (the window first: the runs that need it wait for it).
runs=${RUNS:-} # in RUNS's order; by default the methods without a window first (the window
# is found meanwhile)
if [ -z "$runs" ]; then
  for m in $methods; do needs_window "$m" || for f in $lr_factors; do runs+=" $m-lr$f"; done; done
  for m in $methods; do ! needs_window "$m" || for f in $lr_factors; do runs+=" $m-lr$f"; done; done
fi
for n in $runs; do run_variant "$n" > /dev/null; done # an unknown variant stops before any work
for n in $runs; do
  if needs_window "$(run_method "$n")"; then spawn find_window; break; fi
done
spawn mcqs $model "$o" wmdp:3 mmlu-val
spawn retrain "$o/retrain-val" 0,1,2 3
for n in $runs; do spawn sweep_run "$n"; done
drain
python3 "$here/scripts/wmdp-table.py" --choose "$out"
if [ "${PHASE:-all}" = validation ]; then
  echo "wmdp-qwen: validation done (PHASE=validation); run again without it for the reported tables" >&2
  exit 0
fi
chosen() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$out/chosen.json" "$1"; }

# 2. The reported tables (the chosen models made again where only their JSON was kept).
spawn mcqs $model "$o" wmdp mmlu mmlu-near
spawn retrain "$o/retrain" 0,1,2,3 4
spawn retrain "$o/retrain-full" 0,1,2,3 4 --full --layers "$layers"
reported_run() { # name, what: the chosen run's reported measurements
  local n=$1 d="$out/sweep/$1" e="$out/measured/$1"
  case $2 in
    mcq) all_made "$e/mcq-wmdp.json" "$e/mcq-mmlu.json" "$e/mcq-mmlu-near.json" && return 0
      unlearned "$n"; mcqs "$d" "$e" wmdp mmlu mmlu-near ;;
    lora) all_made "$e/retrain/relearn.json" && return 0
      unlearned "$n"; retrain "$e/retrain" 0,1,2,3 4 --unlearned "$d" ;;
    full) all_made "$e/retrain-full/relearn.json" && return 0
      unlearned "$n"; retrain "$e/retrain-full" 0,1,2,3 4 --unlearned "$d" --full ;;
    val) all_made "$e/retrain-val/relearn.json" && return 0
      unlearned "$n"; retrain "$e/retrain-val" 0,1,2 3 --unlearned "$d" ;;
  esac
}
for m in $methods; do
  n=$(chosen "$m")
  for what in mcq lora full; do spawn reported_run "$n" $what; done
done
# The validation counterpart of (b), last: no choice reads it.
for m in $methods; do spawn reported_run "$(chosen "$m")" val; done
drain
echo "done: tables with python3 scripts/wmdp-table.py $out" >&2
