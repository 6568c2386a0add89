#!/usr/bin/env bash
# One process on all local devices: a laptop CPU, one GPU, or a single TPU VM host.
#
#   launch/local.sh --config=configs/moving_digits.py:stage=video,runlocal \
#     --workdir=/tmp/videoldm/video [--config.total_steps=3 ...]
#
# Every argument except --dry-run goes to `python -m videoldm.main` unchanged.
# Environment: PYTHON (default: python3); the usual JAX_PLATFORMS / XLA_FLAGS,
# e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 CPU devices.
# --dry-run prints the command instead of running it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dry_run=0
args=()
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then dry_run=1; else args+=("$arg"); fi
done

set_main_args single "${args[@]}"
command=("$PYTHON" "${main_args[@]}")
if (( dry_run )); then
  print_command "${command[@]}"
  exit 0
fi
exec "${command[@]}"
