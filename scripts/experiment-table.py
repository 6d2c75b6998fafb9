#!/usr/bin/env python3
"""Print the markdown table of an `unlearn run` output directory (docs/results.md uses it).

usage: scripts/experiment-table.py [--vs NAME] runs/<experiment>
       scripts/experiment-table.py --choose runs/<experiment>   (a validation sweep: which
                                  candidate of each method becomes its preset, by the rule below)
       scripts/experiment-table.py --choose runs/<sweep> --write-presets SWEEP.toml SUFFIX DIR
                                  (and one DIR/<method>-SUFFIX.toml preset per method: the picked
                                  candidate's settings, layers and every candidate's numbers)
       scripts/experiment-table.py [--vs NAME] --forget-runs DIR...   (outputs of `unlearn
                                  forget`, named NAME-seedS: their own before/after numbers)
Runs repeated over seeds (stages NAME-seedS, from `seeds = [...]` in the experiment file) get a
second table: the mean over seeds with a 95 % bootstrap interval over seeds and facts (2,000
resamples, seeded), and beside each run whether it differs from the reference run (--vs NAME,
else the first name in sorted order) or ties with it (the interval of the difference contains
0); the unseen half after the relearning attack; and whether the mean meets the forget target
(forget <= 5 % among candidates, held-out drop <= 5 points, perplexity <= +5 %).
--choose applies the preset rule of the sweep files (experiments/sweep-*.toml), fixed before
their runs: per method, the candidate with the lowest mean forget accuracy among those whose mean
held-out accuracy stays >= 95 % and whose perplexity stays within +5 %; when none qualifies, the
highest held-out accuracy among those within +5 % perplexity; else the lowest perplexity.
Columns: forget accuracy (top-1 among candidates, vocabulary top-1), MCQ, held-out accuracy,
WikiText-2 perplexity, fluency, best latent-probe accuracy, relearning (unseen half before ->
after), for the original model and every unlearning run that has an evaluation.
"""
import json
import random
import re
import sys
from pathlib import Path

RESAMPLES = 2000
RELEARN = "relearn.unseen_after"
# The forget target: forget accuracy among candidates, held-out drop, relative perplexity rise.
TARGET_FORGET, TARGET_HELD_OUT_DROP, TARGET_PPL_RISE = 0.05, 0.05, 0.05
# The preset rule's guards: held-out accuracy kept, perplexity rise allowed.
CHOOSE_HELD_OUT, CHOOSE_PPL_RISE = 0.95, 0.05

COLS = [
    ("forget.top1_candidates", "forget (among sports)", "pct"),
    ("forget.top1_vocab", "forget (vocab top-1)", "pct"),
    ("forget.know_nothing_floor.top1_candidates", "know-nothing floor", "pct"),
    ("forget.mcq_accuracy", "forget MCQ", "pct"),
    ("held_out.top1_candidates", "held-out", "pct"),
    ("utility.wikitext_perplexity", "WikiText-2 ppl", "f2"),
    ("fluency.ngram_entropy", "answer n-gram entropy", "f2"),
    ("latent.forget.best_layer_probe_last_subject_token", "latent probe (best layer)", "pct"),
    ("edit.top1_candidates", "edit: new answer wins", "pct"),
    ("edit.paraphrase.top1_candidates", "edit: paraphrases", "pct"),
    ("forget.paraphrase.top1_candidates", "paraphrases: true answer", "pct"),
    ("neighborhood.top1_candidates", "neighbourhood kept", "pct"),
]


def fmt(v, kind):
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if kind == "pct" else f"{v:.2f}"


def main(root, vs=None):
    root = Path(root)
    evals = sorted((root / "eval").glob("*/metrics.json"))
    if not evals:
        sys.exit(f"{root}: no eval/*/metrics.json")
    # Only the columns some evaluation has (CounterFact rows, edit rows).
    present = set()
    for p in evals:
        present |= {r["metric"] for r in json.loads(p.read_text())["rows"]}
    cols = [c for c in COLS if c[0] in present]
    # CounterFact's candidates are the true answer and target_new, not three sports.
    task = json.loads(evals[0].read_text()).get("task", "")
    if "counterfact" in str(task):
        cols = [(k, h.replace("(among sports)", "(true beats new)"), kind) for k, h, kind in cols]
    head = ["run", "method", "params (M)"] + [c[1] for c in cols] + ["relearn: unseen half"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    first = True
    for p in evals:
        m = json.loads(p.read_text())
        rows = {r["metric"]: r for r in m["rows"]}
        if first:
            vals = [fmt(rows.get(k, {}).get("original"), kind) for k, _, kind in cols]
            print("| original | – | – | " + " | ".join(vals) + " | – |")
            first = False
        name = p.parent.name
        man = m.get("manifest") or {}
        vals = [fmt(rows.get(k, {}).get("unlearned"), kind) for k, _, kind in cols]
        u = unseen_curve(p)
        if u:
            rl_s = f"{100 * u[0]['top1_candidates']:.0f}% → {100 * u[-1]['top1_candidates']:.0f}% (p {u[0]['mean_p']:.2f} → {u[-1]['mean_p']:.2f})"
        else:
            rl_s = "–"
        params = man.get("param_count")
        params = f"{params / 1e6:.1f}" if params else "–"
        print(f"| {name} | {man.get('method', '?')} | {params} | " + " | ".join(vals) + f" | {rl_s} |")
    groups = seeded_groups(evals)
    if groups:
        seeds_table(groups, cols, vs)


def unseen_curve(eval_path):
    """The relearning attack's points on the unseen half for the run of `eval/NAME/metrics.json`
    (None when the experiment ran no attack)."""
    rl = eval_path.parent.parent.parent / "relearn" / eval_path.parent.name / "relearn.json"
    return json.loads(rl.read_text())["curve"]["unseen"] if rl.exists() else None


def eval_rows(p):
    """The rows of an evaluation, with the relearning attack's unseen half after it (when the
    experiment ran one) as one more row."""
    rows = {r["metric"]: r for r in json.loads(p.read_text())["rows"]}
    u = unseen_curve(p)
    if u:
        rows[RELEARN] = {"original": u[0]["top1_candidates"],
                         "unlearned": u[-1]["top1_candidates"], "n": u[-1]["n"]}
    return rows


def forget_rows(p):
    """The rows of an `unlearn forget` output's metrics.json (its before/after numbers)."""
    m = json.loads(p.read_text())
    b, a = m["before"], m["after"]
    rows = {}
    for key, part, field, n in [
        ("forget.top1_candidates", "forget", "top1_candidates", "n"),
        ("forget.top1_vocab", "forget", "top1", "n"),
        ("held_out.top1_candidates", "held_out", "top1_candidates", "n"),
    ]:
        rows[key] = {"original": b[part][field], "unlearned": a[part][field], "n": a[part][n]}
    rows["utility.wikitext_perplexity"] = {
        "original": b["wikitext"]["perplexity"], "unlearned": a["wikitext"]["perplexity"], "n": 0}
    return rows


def seeded_groups(paths, load=eval_rows):
    """{base name: [(seed, rows by metric)]} for the runs named NAME-seedS."""
    groups = {}
    for p in paths:
        m = re.fullmatch(r"(.+)-seed(\d+)", p.parent.name)
        if not m:
            continue
        groups.setdefault(m.group(1), []).append((int(m.group(2)), load(p)))
    return groups


def forget_runs(dirs, vs=None):
    paths = [Path(d) / "metrics.json" for d in dirs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"no metrics.json (run with evaluation): {', '.join(missing)}")
    groups = seeded_groups(paths, forget_rows)
    first = next(iter(groups.values()))[0][1]
    cols = [c for c in COLS if c[0] in first]
    print("Before: " + ", ".join(f"{h} {fmt(first[k]['original'], kind)}" for k, h, kind in cols))
    seeds_table(groups, cols, vs)


def resample(runs, key, kind, rng):
    """One bootstrap draw of the mean over seeds: seeds drawn with replacement, and for a
    share, each drawn seed's facts drawn with replacement (a binomial draw of its n facts)."""
    total = 0.0
    for _ in runs:
        rows = rng.choice(runs)[1]
        r = rows[key]
        v = r["unlearned"]
        if kind == "pct" and r["n"] > 0:
            v = sum(rng.random() < v for _ in range(r["n"])) / r["n"]
        total += v
    return total / len(runs)


def target(runs):
    """Whether the mean over seeds meets the forget target, else which bound it misses."""
    def mean(key, field="unlearned"):
        vs = [r[key][field] for _, r in runs if r.get(key, {}).get(field) is not None]
        return sum(vs) / len(vs) if vs else None
    f = mean("forget.top1_candidates")
    h, h0 = mean("held_out.top1_candidates"), mean("held_out.top1_candidates", "original")
    p, p0 = mean("utility.wikitext_perplexity"), mean("utility.wikitext_perplexity", "original")
    if None in (f, h, h0, p, p0):
        return "–"
    missed = [what for what, ok in [
        ("forget", f <= TARGET_FORGET),
        ("held-out", h0 - h <= TARGET_HELD_OUT_DROP),
        ("perplexity", p <= p0 * (1 + TARGET_PPL_RISE)),
    ] if not ok]
    return "met" if not missed else "not met (" + ", ".join(missed) + ")"


def mean_of(runs, key, field="unlearned"):
    """The mean over seeds of one row's field (None when no seed has it)."""
    vs = [r[key][field] for _, r in runs if r.get(key, {}).get(field) is not None]
    return sum(vs) / len(vs) if vs else None


def choose(root):
    """Per method, the candidate the preset rule picks, with every candidate's means; returns
    {method: (picked candidate, every candidate, whether the picked one qualified)}."""
    root = Path(root)
    evals = sorted((root / "eval").glob("*/metrics.json"))
    if not evals:
        sys.exit(f"{root}: no eval/*/metrics.json")
    groups = seeded_groups(evals)
    picks = {}
    method = {}
    for p in evals:
        m = re.fullmatch(r"(.+)-seed(\d+)", p.parent.name)
        if m:
            man = json.loads(p.read_text()).get("manifest") or {}
            method[m.group(1)] = man.get("method", "?")
    print("| method | candidate | seeds | forget | held-out | perplexity | qualifies | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for meth in sorted(set(method.values())):
        cands = []
        for name in sorted(n for n in groups if method.get(n) == meth):
            runs = groups[name]
            f = mean_of(runs, "forget.top1_candidates")
            h = mean_of(runs, "held_out.top1_candidates")
            p, p0 = (mean_of(runs, "utility.wikitext_perplexity", x)
                     for x in ("unlearned", "original"))
            if None in (f, h, p, p0):
                continue
            ppl_ok = p <= p0 * (1 + CHOOSE_PPL_RISE)
            cands.append((name, len(runs), f, h, p, ppl_ok, ppl_ok and h >= CHOOSE_HELD_OUT))
        if not cands:
            continue
        ok = [c for c in cands if c[6]]
        ppl_ok = [c for c in cands if c[5]]
        if ok:
            pick = min(ok, key=lambda c: (c[2], -c[3]))
        elif ppl_ok:
            pick = max(ppl_ok, key=lambda c: (c[3], -c[2]))
        else:
            pick = min(cands, key=lambda c: c[4])
        for c in cands:
            print(f"| {meth} | {c[0]} | {c[1]} | {fmt(c[2], 'pct')} | {fmt(c[3], 'pct')} | "
                  f"{fmt(c[4], 'f2')} | {'yes' if c[6] else 'no'} | {'**chosen**' if c is pick else ''} |")
        picks[meth] = (pick, cands, "qualified" if ok else ("held-out" if ppl_ok else "perplexity"))
    return groups, picks


def bounds(draws):
    """The 95 % interval of RESAMPLES bootstrap draws."""
    d = sorted(draws)
    return d[int(0.025 * RESAMPLES)], d[int(0.975 * RESAMPLES) - 1]


def interval(runs, key, kind, rng):
    """Mean over seeds and its 95 % bootstrap interval, formatted."""
    lo, hi = bounds(resample(runs, key, kind, rng) for _ in range(RESAMPLES))
    mean = sum(r[key]["unlearned"] for _, r in runs) / len(runs)
    if kind == "pct":
        return f"{100 * mean:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def toml_str(v):
    return json.dumps(v, ensure_ascii=False)


def write_presets(root, sweep_toml, suffix, out_dir):
    """One preset file per method: the candidate the rule picked, its settings from the sweep
    file, the layers of the window traced on validation facts, and every candidate's numbers
    (mean over seeds [95 % bootstrap over seeds and facts]) in `chosen_on`."""
    import tomllib
    root, out_dir = Path(root), Path(out_dir)
    sweep = tomllib.loads(Path(sweep_toml).read_text())
    rows = {u["name"]: u for u in sweep.get("unlearn", [])}
    forget = sweep.get("forget", "")
    if not forget.startswith("validation:"):
        sys.exit(f"{sweep_toml}: forget = {forget!r}; presets are chosen on validation facts only")
    groups, picks = choose(root)
    rng = random.Random(0)
    task = sweep.get("task", "sports")
    model = sweep.get("model", "gemma3-270m")
    seed_list = sweep.get("seeds", [sweep.get("seed", 0)])
    seeds, n_seeds = ",".join(map(str, seed_list)), len(seed_list)
    for meth, (pick, cands, how) in sorted(picks.items()):
        want = sorted(n for n, u in rows.items() if u.get("method") == meth)
        have = {c[0]: c[1] for c in cands}
        short = [f"{n} ({have.get(n, 0)} of {n_seeds} seeds)" for n in want if have.get(n, 0) != n_seeds]
        if short:
            sys.exit(f"{root}: {meth}: the sweep is not finished: {', '.join(short)}; "
                     f"run `unlearn run {sweep_toml} --only {meth}` first")
        row = rows.get(pick[0])
        if row is None:
            sys.exit(f"{sweep_toml}: no [[unlearn]] named {pick[0]}")
        loc = root / "locate" / row["localization"] / "localization.json" if row.get("localization") else None
        layers = row.get("layers")
        if layers is None and loc is not None:
            if not loc.exists():
                sys.exit(f"{loc}: missing (the localization {row['localization']!r} of {pick[0]} has not run)")
            ls = sorted(c["layer"] for c in json.loads(loc.read_text())["chosen"])
            layers = f"{ls[0]}-{ls[-1]}" if ls == list(range(ls[0], ls[-1] + 1)) else ",".join(map(str, ls))
        runs = groups[pick[0]]
        first = runs[0][1]
        n_forget, n_held = first["forget.top1_candidates"]["n"], first["held_out.top1_candidates"]["n"]
        p0 = mean_of(runs, "utility.wikitext_perplexity", "original")
        cand_text = "; ".join(
            f"{c[0]} {interval(groups[c[0]], 'forget.top1_candidates', 'pct', rng)} / "
            f"{interval(groups[c[0]], 'held_out.top1_candidates', 'pct', rng)} / "
            f"{interval(groups[c[0]], 'utility.wikitext_perplexity', 'f2', rng)}"
            for c in cands)
        outcome = {
            "qualified": "the lowest mean forget accuracy among the candidates that kept held-out accuracy >= 95 % and perplexity within +5 %",
            "held-out": "no candidate kept held-out accuracy >= 95 % within +5 % perplexity, so the one with the highest held-out accuracy within +5 % perplexity",
            "perplexity": "no candidate stayed within +5 % perplexity, so the one with the lowest perplexity",
        }[how]
        settings = ", ".join(row.get("set", [])) or "the method's defaults"
        lines = [
            f"# {meth} for {task} facts on {model}, chosen on validation facts by the rule fixed in",
            f"# {sweep_toml}.",
            "# Written by scripts/experiment-table.py --write-presets; reproduce the choice with",
            f"#   unlearn run {sweep_toml} --only {meth}",
            f"#   python3 scripts/experiment-table.py --choose {root}",
            f"description = {toml_str(f'{meth} for {task} facts on {model}: {settings}, MLPs {layers} (the window traced on validation facts); mean over seeds on validation: forget {100 * pick[2]:.1f} %, held-out {100 * pick[3]:.1f} %, perplexity {pick[4]:.2f} ({p0:.2f} before)')}",
            f"chosen_on = {toml_str(f'validation split only: {n_forget} facts of validation subjects forgotten ({forget}), {n_held} validation held-out facts, seeds {seeds}, window traced on validation facts (MLPs {layers}). Rule fixed before the runs: {outcome}; picked {pick[0]}. Candidates (forget top-1 among candidates / held-out / WikiText-2 perplexity, mean over seeds [95 % bootstrap over seeds and facts]): {cand_text} ({p0:.2f} before).')}",
            f"method = {toml_str(row['method'])}",
            f"layers = {toml_str(layers)}",
            "set = [" + ", ".join(toml_str(x) for x in row.get("set", [])) + "]",
        ]
        path = out_dir / f"{meth}-{suffix}.toml"
        path.write_text("\n".join(lines) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def seeds_table(groups, cols, vs=None):
    rng = random.Random(0)
    names = list(groups)
    if vs is not None:
        if vs not in groups:
            sys.exit(f"--vs {vs}: no runs named {vs}-seedS (runs: {', '.join(names)})")
        names.remove(vs)
        names.insert(0, vs)
    if any(RELEARN in r for runs in groups.values() for _, r in runs):
        cols = cols + [(RELEARN, "relearn: unseen half after", "pct")]
    head = ["run", "seeds"] + [c[1] for c in cols] + ["forget target"]
    print()
    print(f"Mean over seeds [95 % bootstrap interval]; vs {names[0]}: higher, lower or tie.")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    draws = {}
    for n in names:
        for key, _, kind in cols:
            runs = [r for r in groups[n] if r[1].get(key, {}).get("unlearned") is not None]
            if runs:
                draws[(n, key)] = [resample(runs, key, kind, rng) for _ in range(RESAMPLES)]
    for n in names:
        cells = []
        for key, _, kind in cols:
            d = draws.get((n, key))
            if d is None:
                cells.append("–")
                continue
            runs = [r for r in groups[n] if r[1].get(key, {}).get("unlearned") is not None]
            mean = sum(r[1][key]["unlearned"] for r in runs) / len(runs)
            lo, hi = bounds(d)
            cell = f"{fmt(mean, kind)} [{fmt(lo, kind)}, {fmt(hi, kind)}]"
            ref = draws.get((names[0], key))
            if n != names[0] and ref is not None:
                # Independent draws of the two runs, paired by index.
                dlo, dhi = bounds(a - b for a, b in zip(d, ref))
                cell += " tie" if dlo <= 0 <= dhi else (" higher" if dlo > 0 else " lower")
            cells.append(cell)
        seeds = ",".join(str(s) for s, _ in sorted(groups[n], key=lambda x: x[0]))
        print(f"| {n} | {seeds} | " + " | ".join(cells) + f" | {target(groups[n])} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    vs = None
    if args[:1] == ["--vs"]:
        if len(args) < 2:
            sys.exit("--vs needs a run name")
        vs, args = args[1], args[2:]
    if args[:1] == ["--choose"]:
        if len(args) == 6 and args[2] == "--write-presets":
            write_presets(args[1], args[3], args[4], args[5])
        elif len(args) != 2:
            sys.exit("usage: --choose RUN [--write-presets SWEEP.toml SUFFIX DIR]")
        else:
            choose(args[1])
    elif args[:1] == ["--forget-runs"]:
        forget_runs(args[1:], vs)
    else:
        main(args[0] if args else "runs/demo", vs)
