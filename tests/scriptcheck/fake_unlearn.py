#!/usr/bin/env python3
"""A stand-in for the unlearn binary in tests of the experiment scripts: it logs each call to
$FAKE_LOG (one line each) and writes the files the real command would, with made-up numbers,
after a short pause (so that steps run side by side overlap). Forget runs fail when another one
is running at the same time (the script runs at most one: its memory)."""
import json
import os
import sys
import time

args = sys.argv[1:]
cmd = args[0]


def opt(name):
    return args[args.index(name) + 1] if name in args else None


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


if cmd == "forget" and "--print-config" in args:
    print("steps = 30\n[optim]\nrule = \"adamw\"\nlr = 0.001")
    sys.exit(0)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
running = os.environ["FAKE_LOG"] + ".forgets"
if cmd == "forget":
    os.makedirs(running, exist_ok=True)
    mine = os.path.join(running, str(os.getpid()))
    open(mine, "w").close()
    if len(os.listdir(running)) > 1:
        os.remove(mine)
        sys.exit("fake unlearn: two forget runs at the same time")
time.sleep(0.3)
if cmd == "forget":
    os.remove(mine)
score = {"accuracy": 0.3, "stderr": 0.04,
         "groups": [{"name": f"split_{i}", "accuracy": 0.3, "stderr": 0.04} for i in range(5)]}
if cmd == "mcq":
    print(json.dumps({"model": opt("--model"), "score": score}))
elif cmd == "forget":
    out, lr = opt("--out"), float(next(a for a in args if a.startswith("optim.lr=")).split("=")[1])
    write(os.path.join(out, "metrics.json"), {"before": {"wikitext": {"perplexity": 10.0}},
                                             "after": {"wikitext": {"perplexity": 10.2}}})
    with open(os.path.join(out, "changed.safetensors"), "w") as f:
        f.write("tensors")
    write(os.path.join(out, "manifest.json"), {"config": {"optim": {"lr": lr}}})
elif cmd == "locate":
    write(os.path.join(opt("--out"), "localization.json"), {})
elif cmd == "relearn":
    m = {"accuracy": 0.3, "stderr": 0.04}
    write(os.path.join(opt("--out"), "relearn.json"), {"curve": {"steps": [0, 40], "measured": [m, m]}})
else:
    sys.exit(f"fake unlearn: unknown command {cmd}")
