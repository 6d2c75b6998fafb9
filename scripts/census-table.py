#!/usr/bin/env python3
"""Markdown tables of what models know, from the JSON files of scripts/census.sh.

    python3 scripts/census-table.py runs/census/1.5b runs/census/0.5b ...

Accuracies are percentages ± one standard error; a missing file is shown as "–".
"""
import json
import os
import sys


def load(d, name):
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def acc(v):
    if v is None:
        return "–"
    s = v["score"]
    return f"{100 * s['accuracy']:.1f} ± {100 * s['stderr']:.1f}"


def known(v, rule):
    if v is None:
        return "–"
    for r in v["known"]:
        if r["rule"] == rule:
            return f"{r['known']} / {r['of']}"
    return "–"


def main(dirs):
    rows = []
    for d in dirs:
        first = next((load(d, n) for n in ["mmlu-0shot", "wmdp-0shot", "known-sports"] if load(d, n)), None)
        model = first["model"] if first else os.path.basename(d)
        rows.append((model, d))
    print("| model | MMLU 570, 0-shot | MMLU 570, 5-shot | near subjects (820), 0-shot | near, 5-shot | WMDP 785, 0-shot |")
    print("|---|---|---|---|---|---|")
    for model, d in rows:
        cells = [acc(load(d, n)) for n in ["mmlu-0shot", "mmlu-5shot", "mmlu-near-0shot", "mmlu-near-5shot", "wmdp-0shot"]]
        print(f"| {model} | " + " | ".join(cells) + " |")
    print()
    print("| model | WMDP split 0 | split 1 | split 2 | split 3 | split 4 | letters chosen (WMDP) |")
    print("|---|---|---|---|---|---|---|")
    for model, d in rows:
        w = load(d, "wmdp-0shot")
        if w is None:
            print(f"| {model} | – | – | – | – | – | – |")
            continue
        g = {x["name"]: x for x in w["score"]["groups"]}
        cells = [f"{100 * g[f'split_{i}']['accuracy']:.1f} ± {100 * g[f'split_{i}']['stderr']:.1f}" if f"split_{i}" in g else "–" for i in range(5)]
        letters = " ".join(f"{l} {n}" for l, n in zip("ABCD", w["score"]["chosen"]))
        print(f"| {model} | " + " | ".join(cells) + f" | {letters} |")
    print()
    print("| model | MMLU near subject | 0-shot | 5-shot |")
    print("|---|---|---|---|")
    for model, d in rows:
        z, f = load(d, "mmlu-near-0shot"), load(d, "mmlu-near-5shot")
        if z is None:
            continue
        fg = {x["name"]: x for x in f["score"]["groups"]} if f else {}
        for g in z["score"]["groups"]:
            five = fg.get(g["name"])
            five = f"{100 * five['accuracy']:.1f} ± {100 * five['stderr']:.1f}" if five else "–"
            print(f"| {model} | {g['name']} ({g['n']}) | {100 * g['accuracy']:.1f} ± {100 * g['stderr']:.1f} | {five} |")
    print()
    print("| model | Sports known (top-1) | Sports (first among candidates) | CounterFact known (top-1) | CounterFact (candidates) |")
    print("|---|---|---|---|---|")
    for model, d in rows:
        s, c = load(d, "known-sports"), load(d, "known-counterfact")
        print(f"| {model} | {known(s, 'top1')} | {known(s, 'candidates')} | {known(c, 'top1')} | {known(c, 'candidates')} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
