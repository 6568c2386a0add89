"""Parameters and training-state memory of every text stage at the paper's size.

`jax.eval_shape` of each stage's `init_params` from `configs/sd_video.py` (SD 1.5
and SD's x4 upscaler published layouts, nothing downloaded or allocated): all
parameters, the trainable ones (`config.trainable`), and the training state per
device without data parallel sharding, as the trainer plans it
(`train_step.plan_train_state`: float32 trainable params, frozen ones in their
model's compute dtype, two Adam moments and an EMA copy per trainable param) plus
a float32 gradient per trainable param (activations excluded; remat and bf16
compute bound those).

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
from videoldm.train import sharding as sharding_lib
from videoldm.train import train_step

PAPER = {'text_video': 'backbone 865M + temporal 655M; 3.1B in all (text encoder 354M)'}


def sizes(stage_name: str) -> tuple[int, int, float]:
  """(parameters, trainable parameters, train state + gradient bytes) of a text stage."""
  config = config_utils.load_config(os.path.join(
      common.REPO, 'configs', f'sd_video.py:stage={stage_name}'))
  stage = stages.get_stage(stage_name)(config)
  h, w = config.model.frame_size
  batch = dict(video=jax.ShapeDtypeStruct((1, config.data.num_frames, h, w, 3), jnp.float32),
               caption=jax.ShapeDtypeStruct((1, 77), jnp.int32))
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
  state = train_step.plan_train_state(stage, config, mesh, batch, jax.random.key(0))[0]
  flat = flax.traverse_util.flatten_dict(state.params, sep='/')
  total = sum(leaf.size for leaf in flat.values())
  trainable = sum(leaf.size for path, leaf in flat.items() if re.search(config.trainable, path))
  state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
  return total, trainable, state_bytes + 4 * trainable


def main():
  print('| stage | parameters | trainable | training state | paper |')
  print('|---|---|---|---|---|')
  for name in stages.TEXT_CHAIN:
    total, trainable, state = sizes(name)
    print(f'| `{name}` | {total / 1e6:.1f}M | {trainable / 1e6:.1f}M | {state / 2**30:.1f} GiB | '
          f'{PAPER.get(name, "—")} |', flush=True)


if __name__ == '__main__':
  main()
