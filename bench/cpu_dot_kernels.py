"""XLA's CPU dot kernels: YNNPACK (the default) vs Eigen on the matmul shapes of SD-size U-Nets.

Each kernel choice is an XLA flag read when JAX starts, so every setting runs in
its own process (one thread); the parent prints GFLOP/s and the ratio to the
default. RESULTS.md, figure 1, "XLA's CPU dot kernels at SD 1.5 widths".

  python bench/cpu_dot_kernels.py [--repeats=7]
"""

import argparse
import json
import os
import subprocess
import sys

import common

# (rows, contraction, columns): a square reference, then SD 1.5 U-Net matmuls at 32x32 latents.
SHAPES = ((1024, 1024, 1024),
          (16, 11520, 1280),  # 4x4 1280-channel 3x3 conv as a patch matmul.
          (64, 11520, 1280),  # 8x8 1280-channel 3x3 conv as a patch matmul.
          (256, 5760, 640),  # 16x16 640-channel 3x3 conv as a patch matmul.
          (64, 1280, 10240),  # GEGLU in projection at 8x8.
          (1024, 320, 2560))  # GEGLU in projection at 32x32.
SETTINGS = {'YNNPACK (default)': '',
            'Eigen': '--xla_cpu_experimental_ynn_fusion_type=-individual_dot'}


def rates(repeats: int) -> list[float]:
  """GFLOP/s of a jitted `a @ b` for each of SHAPES, median of `repeats`, in this process."""
  common.configure_cpu_threads(1)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  matmul = jax.jit(lambda a, b: a @ b)
  out = []
  for m, k, n in SHAPES:
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    seconds = common.median(common.interleaved({'dot': lambda: matmul(a, b)}, repeats)['dot'])
    out.append(2 * m * k * n / seconds / 1e9)
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(rates(args.repeats)))
    return
  results = {}
  for name, flags in SETTINGS.items():
    env = {**os.environ, 'XLA_FLAGS': f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    child = subprocess.run([sys.executable, __file__, '--child', f'--repeats={args.repeats}'],
                           env=env, check=True, capture_output=True, text=True)
    results[name] = json.loads(child.stdout.strip().splitlines()[-1])
  default, eigen = results.values()
  rows = [(f'{m} x {k} x {n}', f'{d:.1f}', f'{e:.1f}', f'{e / d:.2f}x')
          for (m, k, n), d, e in zip(SHAPES, default, eigen)]
  print(f'machine: {common.machine()}; one thread, median of {args.repeats}')
  print(common.table(('matmul (rows x contraction x columns)', 'YNNPACK GFLOP/s',
                      'Eigen GFLOP/s', 'Eigen / YNNPACK'), rows))


if __name__ == '__main__':
  main()
