"""Time to a stage's first train step: partial init and the update step compiled alongside.

For the quickstart stages that start from a previous stage (`init_from`), on
one JAX device per core as the quickstart runs, with a batch of zeros:

  before  the whole param tree's init compiled and run, then the update step
          compiled (what the trainer did before commit beeeca8);
  ours    only the params the source lacks (`init_from.exempt`) initialised
          (`train_step.init_params_at`) while the update step compiles in a
          thread (`train_step.compile_in_background`).

Loading the source checkpoint is left out (the same in both). Each row runs the
two setups alternately, `--repeats` times each, with fresh jitted functions.

  python bench/stage_start.py [--stages=video,interpolation,image] [--repeats=2]
"""

import argparse
import re
import sys
import time

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--stages', default='image,video,interpolation,decoder,upsampler')
PARSER.add_argument('--repeats', type=int, default=2)
ARGS = PARSER.parse_args()

from videoldm import host_devices  # pylint: disable=g-import-not-at-top,wrong-import-position

host_devices.keep_freed_memory()
host_devices.use_one_device_per_core()  # Before JAX's first computation.

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = f'{common.REPO}/configs/moving_digits_quickstart.py:stage={{}}'


def setup(name: str):
  """`(stage, config, mesh, batch, key, kept_paths)` for the quickstart stage `name`."""
  config = config_utils.load_config(CONFIG.format(name))
  stage = stages.get_stage(name)(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  data = config.data
  shape = (config.batch_size, data.num_frames, data.image_size, data.image_size, 3)
  batch = jax.device_put(dict(video=jnp.zeros(shape), labels=jnp.zeros(shape[:1] + (1,),
                                                                         jnp.int32)),
                         sharding_lib.batch_sharding(mesh))
  key = jax.random.key(0)
  abstract = train_step.plan_train_state(stage, config, mesh, batch, key)[0]
  exempt = [re.compile(pattern) for pattern in config.init_from.exempt]
  kept = [path for path in flax.traverse_util.flatten_dict(abstract.params, sep='/')
          if any(regex.search(path) for regex in exempt)]
  return stage, config, mesh, batch, key, kept


def start(stage, config, mesh, batch, key, kept, ours: bool) -> float:
  """Seconds from planning to an initialised param tree and a compiled update step."""
  begin = time.perf_counter()
  abstract, state_sharding, labels, tx = train_step.plan_train_state(stage, config, mesh, batch,
                                                                     key)
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding,
                                    sharding_lib.batch_sharding(mesh), key)
  if ours:
    compiling = train_step.compile_in_background(step, abstract, batch)
    common.block(train_step.init_params_at(stage, state_sharding.params, key, batch, kept))
    compiling.result()
  else:
    init = jax.jit(lambda rng, batch: stage.init_params(rng, stage.preprocess(batch)),
                   out_shardings=state_sharding.params)
    common.block(train_step.compile_for_one_call(init, key, batch)(key, batch))
    step.lower(abstract, batch).compile()
  return time.perf_counter() - begin


def main():
  rows = []
  for name in ARGS.stages.split(','):
    args = setup(name)
    times = {'ours': [], 'before': []}
    for _ in range(ARGS.repeats):
      for label in times:
        times[label].append(start(*args, ours=label == 'ours'))
    ours, before = common.median(times['ours']), common.median(times['before'])
    rows.append([name, f'{len(args[-1])}', f'{before:.1f} s', f'{ours:.1f} s',
                 f'{before / ours:.2f}x'])
  common.report('Stage start: partial init + update step compiled alongside',
                ['stage', 'params initialised (ours)', 'before', 'ours', 'speed-up'], rows,
                notes=[f'{jax.device_count()} JAX CPU devices; medians of {ARGS.repeats}.'])


if __name__ == '__main__':
  main()
