#!/usr/bin/env python3
"""The whole pipeline, `unlearn` beside a PyTorch reference: time and peak memory per stage.

    python3 bench/pytorch_pipeline.py [--threads 2] [--unlearn target/release/unlearn] \
        [--out bench/pipeline.json]

Needs torch, transformers and gguf (`pip install torch transformers gguf`); without them only
the `unlearn` side runs. Each stage of each side runs in its own process, so its peak resident
memory is its own (model included) and its time includes loading the model.

The stages are the demo's (Sports Facts, the first 16 athletes Gemma 3 270M knows):

| stage | unlearn | PyTorch reference (hooks, as the research scripts do it) |
|---|---|---|
| locate-trace | `locate --method kuda-window --samples 5 --max-facts 8 --no-heads` | census of the 1,559 athletes (last-position logits); ROME sweep: every (layer, token) residual restored, then the 3-MLP window at the last subject token, 8 facts x 5 noise samples |
| locate-probe | `locate --method probe` | residual stream of the known athletes, a logistic probe per layer and position (full-batch Adam, 300 iterations) |
| forget-kuda | `forget --method kuda --layers 2-4 --no-eval` | key statistics E[kk^T] of the 9 matrices over 128 retain facts + 64 WikiText chunks, eigendecomposition, then 30 AdamW steps of the deviation loss (relaxed projection) + retain/text MSE at block 4 |
| forget-ga | `forget --method ga --layers 2-4 --no-eval` | 30 AdamW steps of -CE on the 16 answers |
| eval | `eval --unlearned <kuda>` (quick suite) | original and unlearned: completion (16 forget + 200 held-out), MCQ, 2 spellings, greedy answers (16 tokens) scored under the original, WikiText-2 perplexity (2,048 tokens, window 512, stride 256), latent probes |
| relearn | `relearn --unlearned <kuda> --steps 10` | LoRA rank 8 on every linear layer, 10 steps, the unseen half measured at 0, 5, 10 |

The reference does the same amount of work the straightforward way: full forwards (no cached
prefix, no early stop at the representation layer), forward hooks, logits only at the positions
it reads. Both sides use the same thread count. Numbers go to --out as JSON.
"""
import argparse, csv, json, math, os, random, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
SPORTS = [" football", " basketball", " baseball"]
STAGES = ["locate-trace", "locate-probe", "forget-kuda", "forget-ga", "eval", "relearn"]


# ---------------------------------------------------------------- unlearn side

def ours_commands(bin_, work):
    loc = os.path.join(work, "loc")
    return {
        "locate-trace": [bin_, "locate", "--method", "kuda-window", "--samples", "5", "--max-facts", "8",
                         "--no-heads", "--out", loc],
        "locate-probe": [bin_, "locate", "--method", "probe", "--top-k", "3", "--out", os.path.join(work, "flu")],
        "forget-kuda": [bin_, "forget", "--method", "kuda", "--layers", "2-4", "--no-eval",
                        "--out", os.path.join(work, "kuda")],
        "forget-ga": [bin_, "forget", "--method", "ga", "--layers", "2-4", "--no-eval",
                      "--out", os.path.join(work, "ga")],
        "eval": [bin_, "eval", "--unlearned", os.path.join(work, "kuda"), "--out", os.path.join(work, "eval")],
        "relearn": [bin_, "relearn", "--unlearned", os.path.join(work, "kuda"), "--steps", "10",
                    "--out", os.path.join(work, "relearn")],
    }


def run_measured(cmd, env):
    """Run a command; (seconds, peak RSS bytes of that process, exit code)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}", file=sys.stderr)
    return secs, ru.ru_maxrss * 1024, code


# ---------------------------------------------------------------- PyTorch side

def gguf_path():
    d = os.environ.get("UNLEARN_CACHE", os.path.expanduser("~/.cache/unlearn"))
    return os.path.join(d, "gemma-3-270m-q4_k_m.gguf")


def hf_dir(work):
    return os.path.join(work, "hf")


def convert(torch, work):
    """GGUF -> a Hugging Face directory, once (not timed: a research script converts once too)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(gguf_path())
    AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(hf_dir(work))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    from safetensors.torch import save_model
    save_model(model, os.path.join(hf_dir(work), "model.safetensors"))
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    with open(os.path.join(hf_dir(work), "config.json"), "w") as fh:
        json.dump(cfg, fh)


def load_model(torch, work):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir(work))
    model = AutoModelForCausalLM.from_pretrained(hf_dir(work), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model


def sports_facts():
    with open(os.path.join(DATA, "sports_facts", "sports.csv"), newline="") as fh:
        return [{"prompt": r["prompt"], "subject": r["athlete"], "answer": " " + r["sport"].strip()}
                for r in csv.DictReader(fh)]


def wikitext_lines():
    with open(os.path.join(DATA, "wikitext2", "wiki.test.raw")) as fh:
        lines = [l.rstrip("\r\n") for l in fh if l.strip()]
    h = len(lines) // 2
    return lines[:h], lines[h:]


class Ctx:
    """Model, tokenizer and the helpers every stage uses."""

    def __init__(self, torch, work):
        self.torch, self.work = torch, work
        self.tok, self.model = load_model(torch, work)
        self.layers = self.model.model.layers
        self.sport_ids = [self.tok(s, add_special_tokens=False).input_ids[0] for s in SPORTS]

    def enc(self, s):
        return self.tok(s).input_ids

    def pad(self, rows):
        """Right-padded ids, mask and the index of each row's last token."""
        T = max(len(r) for r in rows)
        ids = self.torch.tensor([r + [0] * (T - len(r)) for r in rows])
        mask = self.torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
        return ids, mask, self.torch.tensor([len(r) - 1 for r in rows])

    def hidden(self, rows, **kw):
        ids, mask, last = self.pad(rows)
        out = self.model.model(input_ids=ids, attention_mask=mask, **kw)
        return out, last

    def last_logits(self, rows, bs=32):
        outs = []
        for i in range(0, len(rows), bs):
            out, last = self.hidden(rows[i:i + bs])
            h = out.last_hidden_state[self.torch.arange(len(last)), last]
            outs.append(self.model.lm_head(h))
        return self.torch.cat(outs)

    def subject_last(self, f):
        """Index of the last subject token in the prompt's ids."""
        i = f["prompt"].rfind(f["subject"]) + len(f["subject"])
        return len(self.enc(f["prompt"][:i])) - 1

    def known(self):
        path = os.path.join(self.work, "known.json")
        if os.path.exists(path):
            with open(path) as fh:
                return json.load(fh)
        facts = sports_facts()
        with self.torch.no_grad():
            top = self.last_logits([self.enc(f["prompt"]) for f in facts], 64).argmax(-1).tolist()
        known = [f for f, t in zip(facts, top) if t == self.sport_ids[SPORTS.index(f["answer"])]]
        with open(path, "w") as fh:
            json.dump(known, fh)
        return known

    def splits(self):
        k = self.known()
        return k[:16], k[16:144], k[144:344]

    def accuracy(self, facts):
        torch = self.torch
        with torch.no_grad():
            lg = self.last_logits([self.enc(f["prompt"]) for f in facts])
        p = torch.softmax(lg, -1)
        ans = torch.tensor([self.sport_ids[SPORTS.index(f["answer"])] for f in facts])
        cand = lg[:, self.sport_ids].argmax(-1)
        among = (torch.tensor(self.sport_ids)[cand] == ans).float().mean().item()
        return among, (lg.argmax(-1) == ans).float().mean().item(), p[torch.arange(len(ans)), ans].mean().item()


def stage_locate_trace(c):
    torch = c.torch
    forget, _, _ = c.splits()
    L = len(c.layers)
    emb = c.model.model.embed_tokens
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        std = emb(torch.randint(0, c.model.config.vocab_size, (4096,), generator=g)).std().item()
        for f in forget[:8]:
            ids = c.enc(f["prompt"])
            s1 = c.subject_last(f) + 1
            s0 = s1 - len(c.tok(" " + f["subject"], add_special_tokens=False).input_ids)
            ans = c.sport_ids[SPORTS.index(f["answer"])]
            x = torch.tensor([ids]).repeat(5, 1)
            noise = torch.randn(5, s1 - s0, c.model.config.hidden_size, generator=g) * 3 * std
            clean, mlp = {}, {}
            hs = [c.layers[l].register_forward_hook(lambda m, i, o, l=l: clean.__setitem__(l, o[0] if isinstance(o, tuple) else o)) for l in range(L)]
            hs += [c.layers[l].mlp.register_forward_hook(lambda m, i, o, l=l: mlp.__setitem__(l, o)) for l in range(L)]
            c.model(input_ids=x[:1], logits_to_keep=1)
            [h.remove() for h in hs]

            def corrupt(m, i, o):
                o = o.clone()
                o[:, s0:s1] += noise
                return o

            he = emb.register_forward_hook(corrupt)

            def run_with(hooks):
                hs = [mod.register_forward_hook(fn) for mod, fn in hooks]
                p = torch.softmax(c.model(input_ids=x, logits_to_keep=1).logits[:, -1], -1)[:, ans].mean()
                [h.remove() for h in hs]
                return p.item()

            def restore(src, t):
                def fn(m, i, o):
                    if isinstance(o, tuple):
                        h = o[0].clone()
                        h[:, t] = src[0, t]
                        return (h,) + tuple(o[1:])
                    o = o.clone()
                    o[:, t] = src[0, t]
                    return o
                return fn

            for l in range(L):
                for t in range(len(ids)):
                    run_with([(c.layers[l], restore(clean[l], t))])
            for l in range(L):
                win = range(max(0, l - 1), min(L, l + 2))
                run_with([(c.layers[w].mlp, restore(mlp[w], s1 - 1)) for w in win])
            he.remove()


def features(c, facts, pos):
    """Residual stream at every layer for each fact: [layers+1, N, D] at `pos` ('subject'|'last')."""
    torch = c.torch
    feats = []
    with torch.no_grad():
        for i in range(0, len(facts), 16):
            chunk = facts[i:i + 16]
            out, last = c.hidden([c.enc(f["prompt"]) for f in chunk], output_hidden_states=True)
            idx = torch.tensor([c.subject_last(f) for f in chunk]) if pos == "subject" else last
            feats.append(torch.stack([h[torch.arange(len(chunk)), idx] for h in out.hidden_states]))
    return torch.cat(feats, 1)


def fit_probe(torch, x, y, k=3, iters=300, lr=0.05, l2=1e-2):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 / 2 * (w * w).sum()
        loss.backward()
        opt.step()
    return lambda z: (((z - mu) / sd) @ w + b).argmax(-1)


def stage_locate_probe(c):
    torch = c.torch
    known = c.known()
    y = torch.tensor([SPORTS.index(f["answer"]) for f in known])
    h = len(known) // 2
    for pos in ("subject", "last"):
        f = features(c, known, pos)
        for l in range(f.shape[0]):
            pred = fit_probe(torch, f[l, :h], y[:h])
            with torch.no_grad():
                (pred(f[l, h:]) == y[h:]).float().mean()


def mlp_params(c, layers):
    return [(l, n, getattr(c.layers[l].mlp, n).weight) for l in layers for n in ("gate_proj", "up_proj", "down_proj")]


def lr_at(step, steps, lr, warmup=2, min_ratio=0.1):
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def text_chunks(c, n, tokens=64):
    train, _ = wikitext_lines()
    ids = c.tok("\n".join(train[:4000])).input_ids
    return [ids[i * tokens:(i + 1) * tokens] for i in range(n)]


def stage_forget_kuda(c, steps=30, beta=3.0, rep=4, layers=(2, 3, 4)):
    torch = c.torch
    forget, retain, _ = c.splits()
    params = mlp_params(c, layers)
    for _, _, w in params:
        w.requires_grad_(True)
    f_rows = [c.enc(f["prompt"]) for f in forget]
    r_rows = [c.enc(f["prompt"]) for f in retain]
    t_rows = text_chunks(c, 64)
    # key statistics of each updated matrix over retain facts + text, then the relaxed projector
    keys = {}

    def grab(name):
        def fn(m, i):
            keys.setdefault(name, []).append(i[0].reshape(-1, i[0].shape[-1]).detach())
        return fn

    hs = [getattr(c.layers[l].mlp, n).register_forward_pre_hook(grab((l, n))) for l, n, _ in params]
    with torch.no_grad():
        for rows in (r_rows, t_rows):
            for i in range(0, len(rows), 16):
                c.hidden(rows[i:i + 16])
    [h.remove() for h in hs]
    proj = {}
    for k, xs in keys.items():
        x = torch.cat(xs)
        s = x.T @ x / x.shape[0]
        lam, u = torch.linalg.eigh(s)
        tau = 0.01 * lam.mean()
        proj[k] = (u * (tau / (lam.clamp(min=0) + tau))) @ u.T
    def reps(rows, bs):
        """Residual after block `rep` of the original model, one tensor per row (unpadded)."""
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), bs):
                h = c.hidden(rows[i:i + bs], output_hidden_states=True)[0].hidden_states[rep + 1]
                out += [h[j, :len(r)] for j, r in enumerate(rows[i:i + bs])]
        return out

    h0_f = torch.nn.utils.rnn.pad_sequence(reps(f_rows, 16), batch_first=True)
    h0_r, h0_t = reps(r_rows, 32), reps(t_rows, 16)
    opt = torch.optim.AdamW([w for _, _, w in params], lr=1e-3, weight_decay=0.0)
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        out, _ = c.hidden(f_rows, output_hidden_states=True)
        h = out.hidden_states[rep + 1]
        _, mask, _ = c.pad(f_rows)
        sample = (torch.rand(mask.shape, generator=gen) < 0.5) & mask.bool()
        cos = torch.nn.functional.cosine_similarity(h, h0_f, dim=-1)
        loss_f = torch.exp(-beta * (1 - cos))[sample].mean()
        opt.zero_grad()
        loss_f.backward()
        with torch.no_grad():
            for l, n, w in params:
                w.grad.copy_(w.grad @ proj[(l, n)])
        keep = 0
        for rows, ref, n, weight in ((r_rows, h0_r, 32, 10.0), (t_rows, h0_t, 4, 10.0)):
            pick = rng.sample(range(len(rows)), n)
            out, _ = c.hidden([rows[i] for i in pick], output_hidden_states=True)
            ref = torch.nn.utils.rnn.pad_sequence([ref[i] for i in pick], batch_first=True)
            _, m, _ = c.pad([rows[i] for i in pick])
            d = ((out.hidden_states[rep + 1] - ref) ** 2).sum(-1)
            keep = keep + weight * (d * m).sum() / m.sum()
        keep.backward()
        torch.nn.utils.clip_grad_norm_([w for _, _, w in params], 1.0)
        opt.step()


def answer_ids(c, facts):
    return c.torch.tensor([c.sport_ids[SPORTS.index(f["answer"])] for f in facts])


def ce_last(c, rows, targets):
    out, last = c.hidden(rows)
    h = out.last_hidden_state[c.torch.arange(len(last)), last]
    return c.torch.nn.functional.cross_entropy(c.model.lm_head(h), targets)


def stage_forget_ga(c, steps=30):
    torch = c.torch
    forget, _, _ = c.splits()
    params = [w for _, _, w in mlp_params(c, (2, 3, 4))]
    for w in params:
        w.requires_grad_(True)
    rows, tg = [c.enc(f["prompt"]) for f in forget], answer_ids(c, forget)
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 2e-5)
        opt.zero_grad()
        (-ce_last(c, rows, tg)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()


def eval_model(c, original, forget, held_out, probes):
    torch = c.torch
    c.accuracy(forget)
    c.accuracy(held_out)
    letters = ["A", "B", "C"]
    letter_ids = [c.tok(" " + l, add_special_tokens=False).input_ids[0] for l in letters]
    for facts in (forget, held_out):
        qs = []
        for f in facts:
            line = f["prompt"].splitlines()[-1].replace("Fact:", "").strip()
            ch = "".join(f"{l}. {s.strip()}\n" for l, s in zip(letters, SPORTS))
            qs.append(c.enc(f"Question: {line} ___?\n{ch}Answer:"))
        with torch.no_grad():
            c.last_logits(qs, 16)[:, letter_ids].argmax(-1)
    for fmt in (str.upper, lambda s: " ".join("-".join(w) for w in s.split(" "))):
        c.accuracy([dict(f, prompt=f["prompt"].replace(f["subject"], fmt(f["subject"]))) for f in forget])
    rows = [c.enc(f["prompt"]) for f in forget]
    T = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = (torch.arange(T)[None] >= torch.tensor([T - len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        gen = c.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
        m2 = torch.cat([mask, torch.ones(len(rows), gen.shape[1] - T, dtype=torch.long)], 1)
        lg = original(input_ids=gen, attention_mask=m2).logits[:, T - 1:-1]
        torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), gen[:, T:].reshape(-1))
        _, wiki = wikitext_lines()
        toks = c.tok("\n".join(wiki[:2000])).input_ids[:2048]
        for s in range(0, len(toks) - 256, 256):
            w = torch.tensor([toks[s:s + 512]])
            c.model(input_ids=w).logits
    f = features(c, forget, "subject")
    for l, p in enumerate(probes):
        p(f[l])


def stage_eval(c):
    import copy
    torch = c.torch
    forget, retain, held_out = c.splits()
    original = c.model
    unlearned = copy.deepcopy(original)
    y = torch.tensor([SPORTS.index(f["answer"]) for f in retain])
    fr = features(c, retain, "subject")
    probes = [fit_probe(torch, fr[l, len(retain) // 4:], y[len(retain) // 4:]) for l in range(fr.shape[0])]
    for m in (original, unlearned):
        c.model = m
        eval_model(c, original, forget, held_out, probes)


def stage_relearn(c, steps=10, rank=8, alpha=16):
    torch = c.torch
    forget, retain, _ = c.splits()
    seen, unseen = forget[:8], forget[8:]
    loras = []
    for layer in c.layers:
        for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            a = (torch.randn(rank, mod.in_features) / math.sqrt(mod.in_features)).requires_grad_(True)
            b = torch.zeros(mod.out_features, rank, requires_grad=True)
            mod.register_forward_hook(lambda m, i, o, a=a, b=b: o + (alpha / rank) * (i[0] @ a.T) @ b.T)
            loras += [a, b]
    opt = torch.optim.AdamW(loras, lr=1e-3, weight_decay=0.0)
    texts = text_chunks(c, 16)
    rng = random.Random(0)
    c.accuracy(unseen)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        opt.zero_grad()
        facts = seen + rng.sample(retain, 8)
        loss = ce_last(c, [c.enc(f["prompt"]) for f in facts], answer_ids(c, facts))
        t = torch.tensor(rng.sample(texts, 2))
        lg = c.model(input_ids=t).logits[:, :-1]
        loss = loss + torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), t[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        if (step + 1) % 5 == 0:
            c.accuracy(unseen)


def torch_stage(name, work, threads):
    """Run one reference stage in this process (called in a child)."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = Ctx(torch, work)
    if name == "locate-trace":
        c.known()
    {"locate-trace": stage_locate_trace, "locate-probe": stage_locate_probe,
     "forget-kuda": stage_forget_kuda, "forget-ga": stage_forget_ga,
     "eval": stage_eval, "relearn": stage_relearn}[name](c)
    print(json.dumps({"known": len(c.known())}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unlearn", default=os.path.join(ROOT, "target", "release", "unlearn"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "pipeline.json"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage == "convert":
        import torch
        return convert(torch, a.work)
    if a.stage:
        return torch_stage(a.stage, a.work, a.threads)
    stages = a.stages.split(",")
    try:
        import torch  # noqa: F401
        have_torch = not a.skip_torch
    except ImportError:
        have_torch = False
        print("torch is not installed: only the unlearn side runs", file=sys.stderr)
    env = dict(os.environ, UNLEARN_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1")
    res = {"threads": a.threads, "stages": {}}
    with tempfile.TemporaryDirectory() as w_ours, tempfile.TemporaryDirectory() as w_torch:
        cmds = ours_commands(a.unlearn, w_ours)
        if have_torch:
            secs, _, code = run_measured([sys.executable, __file__, "--stage", "convert", "--work", w_torch], env)
            if code != 0:
                sys.exit("could not convert the GGUF for PyTorch")
            res["pytorch_convert_seconds"] = secs
        for s in stages:
            r = {}
            if not a.skip_ours:
                secs, rss, code = run_measured(cmds[s], env)
                r["unlearn"] = {"seconds": secs, "peak_rss_bytes": rss, "ok": code == 0, "command": " ".join(cmds[s][1:])}
            if have_torch:
                secs, rss, code = run_measured([sys.executable, __file__, "--stage", s, "--work", w_torch,
                                                "--threads", str(a.threads)], env)
                r["pytorch"] = {"seconds": secs, "peak_rss_bytes": rss, "ok": code == 0}
            if "unlearn" in r and "pytorch" in r:
                r["speedup"] = r["pytorch"]["seconds"] / r["unlearn"]["seconds"]
                r["memory_ratio"] = r["pytorch"]["peak_rss_bytes"] / r["unlearn"]["peak_rss_bytes"]
            res["stages"][s] = r
            print(s, json.dumps(r), file=sys.stderr, flush=True)
    if have_torch:
        import torch
        res["torch"] = torch.__version__
    tot = lambda side: sum(r[side]["seconds"] for r in res["stages"].values() if side in r)
    res["total_seconds"] = {"unlearn": tot("unlearn"), "pytorch": tot("pytorch")}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=2)
    os.replace(tmp, a.out)
    print(json.dumps(res["total_seconds"]))


if __name__ == "__main__":
    main()
