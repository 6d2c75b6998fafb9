#!/usr/bin/env bash
# Installs a CUDA compiler toolchain (nvcc, headers, cudart) from NVIDIA's PyPI wheels into a
# cache folder and prints the environment that `cargo build --features cuda` needs. No GPU and
# no driver are needed to compile; running needs an NVIDIA driver that supports CUDA 13.4.
#
#   eval "$(scripts/cuda-toolchain.sh)"        # installs once, then exports CUDA_HOME, PATH, ...
#   cargo build --release --features cuda
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

cat <<EOF
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export NVCC="$home/bin/nvcc"
export PATH="$home/bin:\$PATH"
export LIBRARY_PATH="$home/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$home/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13040
EOF
