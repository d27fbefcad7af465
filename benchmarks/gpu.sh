#!/usr/bin/env bash
# benchmarks/gpu.sh: the memory and speed rows on a CUDA machine, in one command of under 8 minutes.
#
#   bash benchmarks/gpu.sh    # from anywhere; writes benchmarks/results/gpu/partial.json and partial.md
#
# It builds .venv-gpu (reusing a CUDA torch already installed system-wide, else `pip install torch`, whose Linux
# wheel is the CUDA build), compiles inplace-abn 1.1.0 for this GPU's architecture only (TORCH_CUDA_ARCH_LIST from
# nvidia-smi; without nvcc it falls back to the pure-PyTorch backend and says so), installs iabn-zoo, then runs
# every benchmarks/bench_*.py module that honours IABN_BENCH_DEVICE through the usual runner, with
# IABN_BENCH_DEVICE=cuda: training memory (bytes kept, peak from torch.cuda.max_memory_allocated), training step
# time, inference fast path.
# Environment: PYTHON (interpreter for the venv, default python3), TORCH_SPEC (default "torch"),
# TORCH_CUDA_ARCH_LIST (default: the GPU's compute capability), GPU_BENCH_BUDGET_S (default 480).
set -euo pipefail

START=$SECONDS
BUDGET=${GPU_BENCH_BUDGET_S:-480}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=benchmarks/results/gpu
VENV=.venv-gpu

say() { printf '[gpu.sh %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
left() { echo $((BUDGET - (SECONDS - START))); }

command -v nvidia-smi >/dev/null || { say "no nvidia-smi: this script needs a CUDA machine"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
fi
PY="$ROOT/$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "installing ${TORCH_SPEC:-torch} (CUDA build)"
    "${PIP[@]}" "${TORCH_SPEC:-torch}"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'
print('torch', torch.__version__, 'CUDA', torch.version.cuda)" >&2
"${PIP[@]}" "setuptools>=68" wheel setuptools_scm ninja requests tqdm safetensors pillow filelock

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' ')"
fi
export TORCH_CUDA_ARCH_LIST
NVCC="$(command -v nvcc || true)"
[ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
has_cuda_kernels() {
    "$PY" -c "from iabn_zoo.layers import native_kernels as n
raise SystemExit(0 if n() is not None and n().has_cuda else 1)" 2>/dev/null
}
"${PIP[@]}" --no-deps -e .
if has_cuda_kernels; then
    say "inplace-abn with CUDA kernels already installed"
elif [ -n "$NVCC" ]; then
    say "building inplace-abn 1.1.0 for sm_${TORCH_CUDA_ARCH_LIST} with $NVCC"
    export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
    IABN_FORCE_CUDA=1 SETUPTOOLS_SCM_PRETEND_VERSION=1.1.0 MAX_JOBS="$(nproc)" \
        "${PIP[@]}" --no-cache-dir --no-build-isolation --force-reinstall --no-deps inplace-abn==1.1.0
fi
if has_cuda_kernels; then
    export IABN_ZOO_BACKEND=native
else
    say "WARNING: no CUDA build of inplace-abn (nvcc missing or build failed): InPlace-ABN rows use backend 'torch'"
    export IABN_ZOO_BACKEND=torch
fi

mkdir -p "$OUT"
MODULES="$(grep -l 'bench_device' benchmarks/bench_*.py | xargs -n1 basename | sed 's/^bench_//; s/\.py$//' \
    | paste -sd, -)"
REMAINING="$(left)"
say "runner on cuda: $MODULES ($REMAINING s left)"
IABN_BENCH_DEVICE=cuda "$PY" -m benchmarks --only "$MODULES" --results-dir "$OUT" \
    --timeout "$(( REMAINING > 60 ? REMAINING / 2 : 30 ))" || say "some modules failed: see the table"

say "done in $((SECONDS - START)) s: $OUT/partial.md"
