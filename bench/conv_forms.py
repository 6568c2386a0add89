"""CPU convolution forms (`models/conv.py`) vs XLA's convolution: single convs and train steps.

Single 3x3 convs on one core (what each of one-device-per-core's devices runs):
forward and gradient (input and kernel) of `conv.conv2d` with the form `choose`
picks vs `implementation='xla'`. Train steps: quickstart stages (random params,
one batch of their size, one XLA device on all cores) compiled with the forms
and with every conv forced to XLA's, interleaved in one run.

  python bench/conv_forms.py [--repeats=5] [--stages=image,autoencoder,video]
"""

import argparse
import os

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--repeats', type=int, default=5)
PARSER.add_argument('--stages', default='image,autoencoder,video')
PARSER.add_argument('--shapes', default='4x32x32x64,4x16x16x128,32x8x8x128,4x64x64x256,'
                    '1x32x32x320,1x8x8x1280', help='b x h x w x channels (3x3, same width)')
ARGS = PARSER.parse_args()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import train_setup  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import conv  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = f'{common.REPO}/configs/moving_digits_quickstart.py:stage={{}}'
PADDING = ((1, 1), (1, 1))


def conv_rows():
  """Per shape: the chosen form, forward and gradient ratios XLA time / form time."""
  rows = []
  for spec in ARGS.shapes.split(','):
    batch, height, width, channels = (int(v) for v in spec.split('x'))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels)) / (3 * channels**0.5),
                         jnp.float32)
    form = conv.choose(x.shape, kernel.shape, (1, 1), PADDING, x.dtype, 'cpu')
    fns = {}
    for name, implementation in (('xla', 'xla'), ('form', None)):
      forward = lambda x, k, i=implementation: conv.conv2d(x, k, (1, 1), PADDING, i)
      fns[f'{name} forward'] = jax.jit(forward)
      fns[f'{name} gradient'] = jax.jit(jax.grad(
          lambda x, k, f=forward: jnp.sum(jnp.sin(f(x, k))), (0, 1)))
    times = common.interleaved({name: (lambda f=f: f(x, kernel)) for name, f in fns.items()},
                               ARGS.repeats)
    ratio = lambda part: common.median(times[f'xla {part}']) / common.median(times[f'form {part}'])
    rows.append([spec, form, common.spread(times['form forward']), f'{ratio("forward"):.2f}x',
                 common.spread(times['form gradient']), f'{ratio("gradient"):.2f}x'])
  return rows


def step_fn(stage: str, forms: bool):
  """One compiled train step of a quickstart stage; every conv XLA's unless `forms`."""
  choose = conv.choose
  if not forms:
    conv.choose = lambda *args, **kwargs: 'xla'
  try:
    config = config_utils.override(config_utils.load_config(CONFIG.format(stage)),
                                   init_from=None)
    state, step, batch = train_setup.build_step(config)
    compiled = step.lower(state, batch).compile()
  finally:
    conv.choose = choose
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics['loss']
  return run


def main():
  threads = len(os.sched_getaffinity(0))
  step_rows = []
  for stage in ARGS.stages.split(','):
    times = common.interleaved({'forms': step_fn(stage, True), 'xla': step_fn(stage, False)},
                               ARGS.repeats)
    step_rows.append([stage, common.spread(times['forms']), common.spread(times['xla']),
                      f'{common.median(times["xla"]) / common.median(times["forms"]):.2f}x'])
  common.report('Quickstart train steps: convolution forms vs XLA convs',
                ['stage', 'forms', 'XLA convs', 'speed-up'], step_rows,
                [f'one XLA device, {threads} threads; median (min-max) of {ARGS.repeats}'])
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
  common.report('Single 3x3 convs: chosen form vs XLA (one core)',
                ['b x h x w x c', 'form', 'forward', 'vs XLA', 'gradient', 'vs XLA'],
                conv_rows(), [f'float32, c -> c channels; median (min-max) of {ARGS.repeats}'])


if __name__ == '__main__':
  main()
