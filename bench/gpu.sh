#!/usr/bin/env bash
# Figures 1-4 on a GPU machine, one prepared run; prints one table per figure.
#
#   bash bench/gpu.sh [WHEELS_DIR]
#
# The GPU image has jax, flax, optax and einops. Everything else the package
# imports (ml-collections, clu, orbax, grain, tfds, torch + diffusers for
# figure 1) comes from wheels carried in WHEELS_DIR (default: ./wheels), installed
# --no-index so nothing is fetched. Figure 1 is skipped when torch/diffusers are
# not importable (it compares against diffusers). Compute is bfloat16 for
# figure 2 (MFU against the measured bf16 matmul peak) at an SD-like width.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-wheels}"
if [ -d "$WHEELS" ]; then
  python -m pip install --no-index --find-links "$WHEELS" --no-deps -q "$WHEELS"/*.whl
fi
python -m pip install --no-deps --no-build-isolation -q -e . 2>/dev/null || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
python -c "import jax; print('devices:', jax.devices())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if python -c "import torch, diffusers" 2>/dev/null; then
  timeout 240 python bench/unet_vs_diffusers.py --threads=0 --repeats=10 --batch=8 || echo "figure 1 failed"
else
  echo "figure 1 skipped: torch/diffusers not installed (carry their wheels in $WHEELS)"
fi
timeout 240 python bench/train_efficiency.py --dtype=bfloat16 --batch=8 --channels=320,640 \
  --image_size=64 --repeats=10 --matmul_size=8192 || echo "figures 2-3 failed"
timeout 120 python bench/sampler_overhead.py --repeats=10 || echo "figure 4 failed"
