#!/usr/bin/env python3
"""PyTorch reference for `unlearn bench`: the same work on the same GGUF, printed as JSON.

Needs torch, transformers and gguf (`pip install torch transformers gguf`). Run by
`unlearn bench --pytorch`, or by hand:

    OMP_NUM_THREADS=1 python3 bench/pytorch_bench.py --gguf ~/.cache/unlearn/gemma-3-270m-q4_k_m.gguf

Work (mirrors src/bench.rs): batch 8 x 32 of token ids 1000 + ((i*32+j)*7919) % 20000;
forward with logits at every position and at the last position only; forward+backward of the
cross-entropy of each row's last-position logits against token 1000 with (a) the MLPs of the 3
middle decoder layers trainable and (b) all weights trainable. Median of --repeats after one
warm-up. float32, CPU.
"""
import argparse, json, os, statistics, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def ids_for_trace(gguf_path):
    """Token ids of the tracing prompt (Gemma 3 tokenizer ids, the same as unlearn's)."""
    return [2, 818, 94648, 25822, 563, 5628, 528, 506, 3207, 529]


def trace_sweep(model, ids, torch):
    """The naive ROME sweep with forward hooks: one batch of 10 noise samples per (layer, token)."""
    x = torch.tensor([ids])
    s0, s1, ans, n = 2, 4, 9079, 10
    L, T = model.config.num_hidden_layers, len(ids)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        std = model.model.embed_tokens(torch.randint(0, model.config.vocab_size, (20000,), generator=g)).std().item()
        noise = torch.randn(n, s1 - s0, model.config.hidden_size, generator=g) * 3 * std
        clean = {}
        hs = [model.model.layers[l].register_forward_hook(lambda m, i, o, l=l: clean.__setitem__(l, o.detach().clone())) for l in range(L)]
        model(x, logits_to_keep=1)
        [h.remove() for h in hs]

        def corrupt(m, i, o):
            o = o.clone()
            o[:, s0:s1] += noise
            return o

        he = model.model.embed_tokens.register_forward_hook(corrupt)
        t0 = time.perf_counter()
        for l in range(L):
            for t in range(T):
                def restore(m, i, o, l=l, t=t):
                    o = o.clone()
                    o[:, t] = clean[l][0, t]
                    return o
                h = model.model.layers[l].register_forward_hook(restore)
                model(x.repeat(n, 1), logits_to_keep=1)
                h.remove()
        he.remove()
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:  # reported as "skipped" by unlearn bench
        print(f"torch/transformers not installed: {e}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    d, f = os.path.split(os.path.abspath(args.gguf))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    B, T = 8, 32
    ids = torch.tensor([[1000 + ((i * T + j) * 7919) % 20000 for j in range(T)] for i in range(B)])
    mask = torch.ones_like(ids)
    target = torch.full((B,), 1000)

    def timeit(fn):
        fn()
        ts = []
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    res = {}
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res["forward_full_logits"] = timeit(lambda: model(input_ids=ids, attention_mask=mask).logits)
        res["forward_last_logits"] = timeit(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
        torch.nn.functional.cross_entropy(out, target).backward()

    L = model.config.num_hidden_layers
    for l in (L // 2 - 1, L // 2, L // 2 + 1):
        for p in model.model.layers[l].mlp.parameters():
            p.requires_grad_(True)
    res["fwd_bwd_3_mlps"] = timeit(step)
    for p in model.parameters():
        p.requires_grad_(True)
    res["fwd_bwd_all_weights"] = timeit(step)
    res["trace_sweep"] = trace_sweep(model, ids_for_trace(args.gguf), torch)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    gemm = 2 * 1024**3 / timeit(lambda: a @ b) / 1e9
    print(json.dumps({"gemm_1024_gflops": gemm, "torch": torch.__version__, "threads": torch.get_num_threads(), "load_seconds": load_s, "seconds": res}))


if __name__ == "__main__":
    main()
