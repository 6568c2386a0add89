"""Parameters and training-state memory of every text stage at the paper's size.

`jax.eval_shape` of each stage's `init_params` from `configs/sd_video.py` (SD 1.5
and SD's x4 upscaler published layouts, nothing downloaded or allocated): all
parameters, the trainable ones (`config.trainable`), and the float32 training
state per device without data parallel sharding: every parameter, plus a
gradient, two Adam moments and an EMA copy of each trainable one (activations
excluded; remat and bf16 compute bound those).

  python bench/text_stack_sizes.py
"""

import os
import re

import common  # pylint: disable=unused-import  (puts the repository on sys.path)

import flax
import jax
import jax.numpy as jnp

from videoldm import config_utils
from videoldm import stages

PAPER = {'text_video': 'backbone 865M + temporal 655M; 3.1B in all (text encoder 354M)'}


def sizes(stage_name: str) -> tuple[int, int]:
  config = config_utils.load_config(os.path.join(
      common.REPO, 'configs', f'sd_video.py:stage={stage_name}'))
  stage = stages.get_stage(stage_name)(config)
  h, w = config.model.frame_size
  batch = dict(video=jax.ShapeDtypeStruct((1, config.data.num_frames, h, w, 3), jnp.float32),
               caption=jax.ShapeDtypeStruct((1, 77), jnp.int32))
  shapes = jax.eval_shape(stage.init_params, jax.random.key(0), batch)
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  total = sum(leaf.size for leaf in flat.values())
  trainable = sum(leaf.size for path, leaf in flat.items() if re.search(config.trainable, path))
  return total, trainable


def main():
  print('| stage | parameters | trainable | training state (f32) | paper |')
  print('|---|---|---|---|---|')
  for name in stages.TEXT_CHAIN:
    total, trainable = sizes(name)
    state = 4 * (total + 4 * trainable) / 2**30
    print(f'| `{name}` | {total / 1e6:.1f}M | {trainable / 1e6:.1f}M | {state:.1f} GiB | '
          f'{PAPER.get(name, "—")} |', flush=True)


if __name__ == '__main__':
  main()
