#!/usr/bin/env bash
# The GPU check, one command, a few minutes:
#
#   scripts/gpu-check.sh OUT                 # build with --features cuda here, then check
#   scripts/gpu-check.sh --build-only DIR    # on a machine with network: build DIR/gpu-check.tar.xz
#   scripts/gpu-check.sh --prebuilt DIR OUT  # on an offline GPU machine: check with DIR's build
#   scripts/gpu-check.sh --cpu OUT           # the dry run without a GPU: the same steps on the CPU
#
# The build travels as one 17 MB file (stripped binaries and libcudart): e.g. build into
# gpu-build/ (ignored by git), carry gpu-build/ with the repository, then --prebuilt gpu-build.
#
# What it checks, on GPU 0:
#   1. every architecture (Gemma 1/2/3, Llama 3.1, Mistral, Qwen2, Qwen3: the tiny random-weight
#      models of tests/fixtures/tiny) against the PyTorch + transformers reference numbers the
#      CPU is tested against: log-probabilities, gradients of every parameter, greedy tokens
#      (the `architectures` test with UNLEARN_TEST_DEVICE=cuda);
#   2. a random-weight model of Llama-3-8B's shape with bf16 weights (`--model random:llama3-8b
#      --weights bf16`, no weights downloaded): `unlearn bench` times the forward pass, a
#      localized KUDA step and a causal-tracing sweep; nvidia-smi is sampled for peak GPU memory;
#   3. the same shape computing in bf16 (`--compute bf16`, mixed-precision training): the same items.
# Results: OUT/gpu-check.json (summary), OUT/bench-bf16-weights.json,
# OUT/bench-compute-bf16.json, OUT/*.log.
#
# What travels: the repository only (no weights). Building needs cargo, crates.io and PyPI
# (scripts/cuda-toolchain.sh installs nvcc 13.4 from PyPI); running needs an NVIDIA driver for
# CUDA >= 13.4 and the CUDA 13 libraries candle links (libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13, libcudart.so.13): from a CUDA 13 toolkit, or the PyPI wheels
# nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc, nvidia-cuda-runtime (found in site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

# build DIR [cpu]: the binaries into DIR/bin, with CUDA unless "cpu".
build() {
    local features=(--features cuda)
    if [ "${2:-}" = cpu ]; then
        features=()
    else
        # Through a variable, so that a failed install stops here (set -e).
        cuda_env="$(scripts/cuda-toolchain.sh)"
        eval "$cuda_env"
    fi
    local target="${CARGO_TARGET_DIR:-$repo/target}" log test_bin
    cargo build --release "${features[@]}"
    log="$(mktemp)"
    cargo test --release "${features[@]}" --test architectures --no-run 2>&1 | tee "$log"
    # Cargo prints the path absolute or relative to the repository.
    test_bin="$(grep -o '([^)]*deps/architectures-[0-9a-f]*)' "$log" | tr -d '()' | tail -1)"
    case "$test_bin" in /*) ;; ?*) test_bin="$repo/$test_bin" ;; esac
    [ -x "$test_bin" ] || { echo "gpu-check: the architectures test binary was not built" >&2; exit 1; }
    mkdir -p "$1/bin"
    cp "$target/release/unlearn" "$1/bin/unlearn"
    cp "$test_bin" "$1/bin/architectures"
    [ "${2:-}" = cpu ] || cp "$CUDA_HOME/lib/libcudart.so.13" "$1/bin/"
    strip "$1/bin/unlearn" "$1/bin/architectures"
}

# The directories holding CUDA 13 libraries: a toolkit's, or NVIDIA's PyPI wheels'.
cuda_lib_path() {
    local dirs=() d
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/libcublas.so.13" ] && dirs+=("$d")
    done
    while IFS= read -r d; do dirs+=("$(dirname "$d")"); done < <(
        python3 - <<'EOF' 2>/dev/null || true
import site, glob, os
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13"):
        for p in glob.glob(os.path.join(root, "nvidia", "**", lib), recursive=True):
            print(p)
EOF
    )
    local IFS=:
    echo "${dirs[*]}"
}

# check BIN OUT [DEVICE SHAPE]: on cuda with Llama-3-8B's shape, or on the CPU with a small one.
check() {
    local bin="$1" out="$2" device="${3:-cuda}" shape="${4:-llama3-8b}"
    mkdir -p "$out"
    export LD_LIBRARY_PATH="$bin:$(cuda_lib_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >"$out/gpu.txt" 2>&1 || true
    local arch_rc=0 bench_rc=0
    # 1. Architectures on the GPU against the transformers reference (run from the repository
    #    root: the test reads tests/fixtures/tiny).
    (cd "$repo" && UNLEARN_TEST_DEVICE="$device" "$bin/architectures" --nocapture --test-threads 1) \
        >"$out/architectures.log" 2>&1 || arch_rc=$?
    # 2. Llama-3-8B's shape in bf16, timed, with nvidia-smi sampling memory every 100 ms.
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$out/memory.csv" 2>/dev/null &
    local smi=$!
    "$bin/unlearn" --weights bf16 bench --model "random:$shape" --repeats 3 \
        --out "$out/bench-bf16-weights.json" >"$out/bench.log" 2>&1 || bench_rc=$?
    # 3. The same shape computing in bf16 (mixed-precision training).
    "$bin/unlearn" --compute bf16 bench --model "random:$shape" --repeats 3 \
        --out "$out/bench-compute-bf16.json" >"$out/bench-compute-bf16.log" 2>&1 || bench_rc=$?
    kill "$smi" 2>/dev/null || true
    python3 - "$out" "$arch_rc" "$bench_rc" "$device" "$shape" <<'EOF'
import json, os, sys
out, arch_rc, bench_rc, device, shape = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def read(name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else ""
mem = [int(x) for x in read("memory.csv").split() if x.strip().isdigit()]
bench = json.loads(read("bench-bf16-weights.json") or "null")
bench16 = json.loads(read("bench-compute-bf16.json") or "null")
summary = {
    "device": device,
    "shape": shape,
    "gpu": read("gpu.txt").strip().splitlines()[1:],
    "architectures": {"passed": arch_rc == 0,
                      "lines": [l for l in read("architectures.log").splitlines()
                                if "max |" in l or "test " in l or "panicked" in l]},
    "bench_bf16": {"passed": bench_rc == 0,
                             "items": [{k: r.get(k) for k in ("name", "seconds", "details")}
                                       for r in (bench or {}).get("results", [])]},
    # Forward throughput: the bench's batch (8 sequences of 32 tokens) per second.
    "forward_tokens_per_s": {r["name"]: r["details"]["batch"] * r["details"]["tokens"] / r["seconds"]
                             for r in (bench or {}).get("results", [])
                             if r["name"].startswith("forward") and r.get("seconds")},
    "forward_tokens_per_s_compute_bf16": {r["name"]: r["details"]["batch"] * r["details"]["tokens"] / r["seconds"]
                                          for r in (bench16 or {}).get("results", [])
                                          if r["name"].startswith("forward") and r.get("seconds")},
    "trace_sweep_seconds_compute_bf16": next((r["seconds"] for r in (bench16 or {}).get("results", [])
                                              if r["name"] == "trace_sweep"), None),
    "peak_gpu_memory_mib": max(mem) if mem else None,
}
for key, log in (("architectures", "architectures.log"), ("bench_bf16", "bench.log")):
    if not summary[key]["passed"]:
        summary[key]["log_tail"] = read(log).strip().splitlines()[-5:]
json.dump(summary, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
    [ "$arch_rc" = 0 ] && [ "$bench_rc" = 0 ]
}

case "${1:-}" in
    --build-only)
        dir="${2:?usage: gpu-check.sh --build-only DIR}"
        tmp="$(mktemp -d)"
        build "$tmp"
        mkdir -p "$dir"
        tar -C "$tmp" -cJf "$dir/gpu-check.tar.xz" bin
        ls -la "$dir/gpu-check.tar.xz"
        ;;
    --prebuilt)
        dir="${2:?usage: gpu-check.sh --prebuilt DIR OUT}"
        out="${3:?usage: gpu-check.sh --prebuilt DIR OUT}"
        tmp="$(mktemp -d)"
        tar -C "$tmp" -xJf "$dir/gpu-check.tar.xz"
        check "$tmp/bin" "$out"
        ;;
    --cpu)
        # The dry run on a machine without a GPU: the same steps on the CPU, without CUDA, with
        # a small random shape (tiny) instead of Llama-3-8B's.
        out="${2:?usage: gpu-check.sh --cpu OUT}"
        tmp="$(mktemp -d)"
        build "$tmp" cpu
        check "$tmp/bin" "$out" cpu tiny
        ;;
    "" | -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        ;;
    *)
        tmp="$(mktemp -d)"
        build "$tmp"
        check "$tmp/bin" "$1"
        ;;
esac
