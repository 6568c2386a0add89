#!/usr/bin/env bash
# Figures 1-4 on a GPU machine, one prepared run; prints one table per figure.
#
#   bash bench/gpu.sh [WHEELS_DIR] [FIGURES]     # FIGURES: default 1234; also 8, 9
#
# All four take about 12 minutes on an H200 (figures 2-3 compile SD-width
# steps: ~6 min); under a 10-minute limit per call run `bash bench/gpu.sh .whl 14`
# then `bash bench/gpu.sh .whl 23`. Figures 8 and 9 (bench/sd_step_mfu.py: the
# configs/sd_video.py text_video step at its paper size, SD 1.5 widths, 16 x 40x64
# latents, batch 1, remat, bf16; random weights) each take at most 8 minutes, run
# alone (`bash bench/gpu.sh .whl 8`, then `... 9`): 8 = temporal-only and full
# fine-tune, cuDNN and XLA attention; 9 = the remat policies, temporal
# with cuDNN. Each compiles a ~1.6B-param step per row (a few minutes in all) and
# prints every row as it finishes, so a timeout keeps the rows done; compiled
# steps are cached in /tmp/jax_cache, so a rerun on the same machine compiles
# less. Fetch the wheels where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     ml_collections==1.1.0 diffusers==0.42.1 importlib_metadata
# The GPU image has jax, flax, optax, orbax, einops and torch but no TensorFlow;
# the benchmarks import neither TensorFlow, TFDS, grain nor clu. The other
# packages they import (ml-collections, diffusers + importlib_metadata for
# figure 1) come from wheels carried in WHEELS_DIR (default: ./.whl), installed
# --no-index so nothing is fetched. Figure 1 is skipped when torch/diffusers are
# not importable. Figure 2 computes in bfloat16 (MFU against the measured bf16
# matmul peak) at an SD-like width.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${1:-.whl}"
FIGURES="${2:-1234}"
if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PY" -c "import jax, flax; print('devices:', jax.devices(), 'jax', jax.__version__, 'flax', flax.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [[ "$FIGURES" == *1* ]]; then
  if "$PY" -c "import torch, diffusers" 2>/dev/null; then
    timeout 240 "$PY" bench/unet_vs_diffusers.py --threads=0 --repeats=10 --batch=8 || echo "figure 1 failed"
  else
    echo "figure 1 skipped: torch/diffusers not installed (carry their wheels in $WHEELS)"
  fi
fi
if [[ "$FIGURES" == *[23]* ]]; then
  timeout 480 "$PY" bench/train_efficiency.py --dtype=bfloat16 --batch=8 --channels=320,640 \
    --image_size=64 --repeats=5 --matmul_size=8192 || echo "figures 2-3 failed"
fi
if [[ "$FIGURES" == *4* ]]; then
  timeout 120 "$PY" bench/sampler_overhead.py --repeats=10 || echo "figure 4 failed"
fi
if [[ "$FIGURES" == *[89]* ]]; then
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
fi
if [[ "$FIGURES" == *8* ]]; then
  timeout 470 "$PY" bench/sd_step_mfu.py --size=paper --batch=1 --modes=temporal,full \
    --attention=cudnn,xla --repeats=5 || echo "figure 8 failed or timed out"
fi
if [[ "$FIGURES" == *9* ]]; then
  timeout 470 "$PY" bench/sd_step_mfu.py --size=paper --batch=1 --modes=temporal \
    --attention=cudnn --remat_policies=nothing_saveable,dots_saveable,off --repeats=5 \
    || echo "figure 9 failed or timed out"
fi
