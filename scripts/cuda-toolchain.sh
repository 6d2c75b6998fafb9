#!/usr/bin/env bash
# Installs a CUDA compiler toolchain (nvcc, headers, cudart) from NVIDIA's PyPI wheels into a
# cache folder and prints the environment that `cargo build --features cuda` needs. No GPU and
# no driver are needed to compile; running needs an NVIDIA driver that supports CUDA 13.4.
#
#   eval "$(scripts/cuda-toolchain.sh)"        # installs once, then exports CUDA_HOME, PATH, ...
#   cargo build --release --features cuda
#
# Linking: candle links the CUDA driver and libraries (cuda, nvrtc, curand, cublas, cublasLt)
# dynamically. The wheels carry no driver, so, as the toolkit's lib/stubs does, link-only stub
# libraries are built from the function names of cudarc's bindings into lib/stubs (found at link
# time through LIBRARY_PATH, never at run time: a GPU machine's real libraries are used there).
#
# Cache: $UNLEARN_CUDA_HOME, else ~/.cache/unlearn/cuda-13.4 (about 350 MB). The versions are
# pinned to the newest CUDA that cudarc 0.19 (candle 0.11's CUDA binding) knows: 13.4.
# The compute capability the kernels are built for: $CUDA_COMPUTE_CAP, default 90 (H100/H200).
set -euo pipefail

NVCC_VERSION=13.4.92
CCCL_VERSION=13.3.4.3.1
home="${UNLEARN_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/unlearn/cuda-13.4}"
stamp="$home/.complete-$NVCC_VERSION-$CCCL_VERSION"

if [ ! -f "$stamp" ]; then
    tmp="$(mktemp -d "${home%/*}/.cuda-XXXXXX" 2>/dev/null || { mkdir -p "${home%/*}" && mktemp -d "${home%/*}/.cuda-XXXXXX"; })"
    trap 'rm -rf "$tmp"' EXIT
    echo "cuda-toolchain: installing nvcc $NVCC_VERSION from PyPI into $home" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/wheels" \
        "nvidia-cuda-nvcc==$NVCC_VERSION" "nvidia-cuda-crt==$NVCC_VERSION" "nvidia-nvvm==$NVCC_VERSION" \
        "nvidia-cuda-runtime==$NVCC_VERSION" "nvidia-cuda-cccl==$CCCL_VERSION" >&2
    for w in "$tmp"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$tmp/tree" >&2
    done
    root="$tmp/tree/nvidia/cu13"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/*
    # The wheels ship only the versioned runtime; the linker looks for libcudart.so.
    ln -sf libcudart.so.13 "$root/lib/libcudart.so"
    "$root/bin/nvcc" --version >&2
    rm -rf "$home"
    mv "$root" "$home"
    touch "$stamp"
fi

# Link-only stubs of the CUDA libraries candle links, from cudarc's function names.
stubs="$home/lib/stubs"
if [ ! -f "$stubs/.complete" ]; then
    repo="$(cd "$(dirname "$0")/.." && pwd)"
    version="$(awk '/^name = "cudarc"/{getline; gsub(/[^0-9.]/, ""); print}' "$repo/Cargo.lock")"
    (cd "$repo" && cargo fetch --quiet) >&2
    src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$version"/src | head -1)"
    [ -d "$src" ] || { echo "cuda-toolchain: cudarc $version sources not found" >&2; exit 1; }
    mkdir -p "$stubs"
    for spec in driver:cuda:1 nvrtc:nvrtc:13 curand:curand:10 cublas:cublas:13 cublaslt:cublasLt:13; do
        IFS=: read -r module lib major <<<"$spec"
        grep -ho '^pub unsafe fn [A-Za-z0-9_]*' "$src/$module"/sys/*.rs | awk '{print "void " $4 "(void) {}"}' | sort -u >"$stubs/$lib.c"
        gcc -shared -fPIC -o "$stubs/lib$lib.so" -Wl,-soname,"lib$lib.so.$major" "$stubs/$lib.c"
        rm "$stubs/$lib.c"
    done
    touch "$stubs/.complete"
fi

cat <<EOF
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export NVCC="$home/bin/nvcc"
export PATH="$home/bin:\$PATH"
export LIBRARY_PATH="$home/lib:$home/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$home/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13040
EOF
