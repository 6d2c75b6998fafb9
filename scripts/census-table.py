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


def group(g):
    """A group's accuracy ± stderr (a WMDP split, an MMLU subject), or "–"."""
    if g is None:
        return "–"
    return f"{100 * g['accuracy']:.1f} ± {100 * g['stderr']:.1f}"


def acc(v):
    """A whole file's accuracy ± stderr, or "–" when the step was not run."""
    return group(v["score"] if v else None)


# The MMLU subjects nearest WMDP, in the order the tables list them.
NEAR = ["college_biology", "high_school_biology", "virology", "college_computer_science", "computer_security"]


def known(v, rule):
    if v is None:
        return "–"
    for r in v["known"]:
        if r["rule"] == rule:
            return f"{r['known']} / {r['of']} ({100 * r['known'] / r['of']:.1f} %)"
    return "–"


# The fact tasks, as the tables name them.
TASKS = {"sports": "Sports athletes", "counterfact": "CounterFact facts"}

# Every file scripts/census.sh writes, in its order.
FILES = ["mmlu-0shot", "mmlu-5shot", "wmdp-0shot", "mmlu-near-0shot", "mmlu-near-5shot",
         "known-sports", "known-counterfact", "mmlu-0shot-chat", "wmdp-0shot-chat"]


def main(dirs):
    rows = []
    for d in dirs:
        first = next((v for n in FILES if (v := load(d, n))), None)
        model = first["model"] if first else os.path.basename(d)
        rows.append((model, d))
    print("| model | MMLU 570, 0-shot | MMLU 570, 5-shot | MMLU 570, chat turn | near subjects (820), 0-shot | near, 5-shot | WMDP 785, 0-shot | WMDP, chat turn |")
    print("|---|---|---|---|---|---|---|---|")
    for model, d in rows:
        names = ["mmlu-0shot", "mmlu-5shot", "mmlu-0shot-chat", "mmlu-near-0shot", "mmlu-near-5shot", "wmdp-0shot", "wmdp-0shot-chat"]
        cells = [acc(load(d, n)) for n in names]
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
        cells = [group(g.get(f"split_{i}")) for i in range(5)]
        letters = " ".join(f"{l} {n}" for l, n in zip("ABCD", w["score"]["chosen"]))
        print(f"| {model} | " + " | ".join(cells) + f" | {letters} |")
    print()
    print("| model | MMLU near subject | 0-shot | 5-shot |")
    print("|---|---|---|---|")
    for model, d in rows:
        shots = [load(d, "mmlu-near-0shot"), load(d, "mmlu-near-5shot")]
        groups = [{x["name"]: x for x in v["score"]["groups"]} if v else {} for v in shots]
        for name in sorted(set(groups[0]) | set(groups[1]), key=lambda n: NEAR.index(n) if n in NEAR else len(NEAR)):
            n = next(g[name]["n"] for g in groups if name in g)
            cells = [group(g.get(name)) for g in groups]
            print(f"| {model} | {name} ({n}) | " + " | ".join(cells) + " |")
    print()
    print("| model | task | top-1 over the vocabulary | first among the candidates | P ≥ 0.5 |")
    print("|---|---|---|---|---|")
    for model, d in rows:
        for task in ["sports", "counterfact"]:
            v = load(d, f"known-{task}")
            cells = [known(v, r) for r in ["top1", "candidates", "p>=0.5"]]
            print(f"| {model} | {TASKS[task]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
