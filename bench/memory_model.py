"""The analytic memory model against XLA, and at the paper's sizes with the largest batch.

(a) Tiny `text_video` train steps (cached latents, XLA attention) compiled on
CPU with abstract state: XLA's peak (arguments + outputs + temporaries -
aliased) vs `videoldm.train.memory_model` (`tests/memory_model_helpers.py`).
(b) The model alone at `configs/sd_video.py` paper size (SD 1.5 widths, bf16
compute and frozen U-Net and CLIP params, float32 trainable params, Adam state and EMA)
for the U-Net stages, temporal-only
and full training, under each remat policy: bytes per video and the largest
batch per 80 GiB device (one device, no sharding of params or optimiser state).

  python bench/memory_model.py [--skip_xla] [--device_gib=80]
"""

import argparse
import math
import os
import sys

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--skip_xla', action='store_true', help='only the paper-size tables')
PARSER.add_argument('--device_gib', type=float, default=80.0)
ARGS = PARSER.parse_args()

sys.path.insert(0, common.TESTS)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import memory_model_helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import memory_model  # pylint: disable=g-import-not-at-top,wrong-import-position

MIB, GIB = 2.0**20, 2.0**30
SMALL = {  # name: tiny_text_config arguments.
    'temporal, no remat, b2 x 4 x 16x16': dict(),
    'full, no remat, b2 x 4 x 16x16': dict(trainable=r'^unet/'),
    'temporal, blocks/nothing, b2 x 4 x 16x16': dict(remat='blocks'),
    'temporal, blocks/dots, b2 x 4 x 16x16': dict(remat='blocks', policy='dots_saveable'),
    'full, no remat, b1 x 2 x 8x8': dict(batch=1, frames=2, latent=(8, 8), trainable=r'^unet/'),
    'temporal, no remat, b1 x 8 x 16x32': dict(batch=1, frames=8, latent=(16, 32)),
}
PAPER_STAGES = ('text_video', 'text_interpolation', 'text_upsampler')
TRAINING = {'temporal-only': None, 'full': r'^unet/'}


def small_rows():
  rows = []
  for name, kwargs in SMALL.items():
    ratio, estimate, xla = memory_model_helpers.compare(
        memory_model_helpers.tiny_text_config(**kwargs))
    rows.append([name, f'{xla["peak"] / MIB:.1f}', f'{xla["temporaries"] / MIB:.1f}',
                 f'{estimate.total / MIB:.1f}', f'{estimate.activations / MIB:.1f}',
                 f'{estimate.state / MIB:.1f}', f'{ratio:.3f}'])
    print(f'{name}: ratio {ratio:.3f}', flush=True)
  return rows


def paper_rows():
  device = ARGS.device_gib * GIB
  rows = []
  for stage_name in PAPER_STAGES:
    base = config_utils.load_config(os.path.join(
        common.REPO, 'configs', f'sd_video.py:stage={stage_name}'))
    for training, trainable in TRAINING.items():
      config = base if trainable is None else config_utils.override(base, trainable=trainable)
      stage = stages.get_stage(stage_name)(config)
      shapes = jax.eval_shape(stage.init_params, jax.random.key(0), {})
      for policy in memory_model.POLICIES:
        one, two = (memory_model.estimate_from_config(config, stage, b, policy, shapes)
                    for b in (1, 2))
        per_video = two.total - one.total
        fixed = one.total - per_video
        largest = max(0, math.floor((device - fixed) / per_video))
        h, w = stage.latent_size()
        rows.append([stage_name, f'{memory_model.unet_frames(config)} x {h}x{w}', training,
                     policy, f'{fixed / GIB:.1f}', f'{per_video / GIB:.2f}', str(largest),
                     f'{(fixed + largest * per_video) / GIB:.1f}'])
      print(f'{stage_name} {training}: {one.params_trainable / 4e6:.0f}M trainable params, '
            f'{one.params_frozen / GIB:.2f} GiB of frozen params\n'
            f'{one.table()}', flush=True)
  return rows


def main():
  if not ARGS.skip_xla:
    rows = small_rows()
    # XLA's CPU scheduler recomputes remat'd blocks early (their peak is the no-remat one),
    # so the remat rows are shown but not counted in the worst ratio.
    ratios = [float(r[-1]) for r in rows if 'no remat' in r[0]]
    worst = max(ratios, key=lambda r: abs(r - 1))
    common.report('Memory model vs XLA (small configs)',
                  ['case', 'XLA peak MiB', 'XLA temp MiB', 'model MiB', 'model activations MiB',
                   'model state MiB', 'model / XLA'], rows,
                  [f'text_video step on cached latents, f32, XLA attention; worst ratio '
                   f'without remat {worst:.3f}'])
  common.report(f'Memory model at paper size (largest batch per {ARGS.device_gib:g} GiB)',
                ['stage', 'U-Net frames x latents', 'training', 'remat policy',
                 'fixed GiB', 'GiB per video', 'largest batch', 'GiB at that batch'],
                paper_rows(),
                ['configs/sd_video.py (SD 1.5 / x4 upscaler layouts), bf16 compute and frozen '
                 'U-Net and CLIP params, f32 trainable params, Adam and EMA; '
                 'fixed = params + gradients + Adam + EMA; cached latents '
                 '(the text_upsampler VAE encode of its pixel batch is not counted)'])


if __name__ == '__main__':
  main()
