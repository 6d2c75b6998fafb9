#!/usr/bin/env python3
"""The WMDP unlearning and relearning table from the outputs of experiments/wmdp-qwen.sh.

    python3 scripts/wmdp-table.py OUT

(a) WMDP accuracy by split, MMLU (570) and the near subjects, per method and the original;
(b) split 4 after retraining on splits 0-3, per method, and the share of what unlearning
removed that came back: (after retraining - unlearned) / (original - unlearned).
Percentages ± one standard error; "–" where a file is missing.
"""
import json
import os
import sys

METHODS = ["original", "kuda", "rmu", "npo", "simnpo", "ga", "localized-ft"]


def load(p):
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pct(s):
    return f"{100 * s['accuracy']:.1f} ± {100 * s['stderr']:.1f}"


def main(out):
    print("| method | WMDP all | split 0 | split 1 | split 2 | split 3 | split 4 | MMLU 570 | near subjects |")
    print("|---|---|---|---|---|---|---|---|---|")
    split4 = {}
    for m in METHODS:
        d = os.path.join(out, m)
        w, mm, near = (load(os.path.join(d, f"mcq-{s}.json")) for s in ["wmdp", "mmlu", "mmlu-near"])
        if w is None:
            print(f"| {m} | " + " | ".join(["–"] * 8) + " |")
            continue
        g = {x["name"]: x for x in w["score"]["groups"]}
        split4[m] = g["split_4"]["accuracy"]
        cells = [pct(w["score"])] + [pct(g[f"split_{i}"]) for i in range(5)]
        cells += [pct(mm["score"]) if mm else "–", pct(near["score"]) if near else "–"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    print("| method | split 4 unlearned | after retraining on 0-3 (steps: accuracy) | recovered share |")
    print("|---|---|---|---|")
    for m in METHODS:
        r = load(os.path.join(out, m, "retrain", "relearn.json"))
        if r is None:
            continue
        c = r["curve"]
        curve = ", ".join(f"{s}: {100 * x['accuracy']:.1f}" for s, x in zip(c["steps"], c["measured"]))
        last = c["measured"][-1]["accuracy"]
        share = "–"
        if m != "original" and "original" in split4 and m in split4:
            removed = split4["original"] - split4[m]
            if removed > 0:
                share = f"{(last - split4[m]) / removed:.2f}"
        print(f"| {m} | {100 * c['measured'][0]['accuracy']:.1f} | {curve} | {share} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
