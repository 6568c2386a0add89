"""Temporal convolutions as 2D convs vs XLA's 3D convs: the video stage's train step on CPU.

One conv's gradient (input and params, 2 x 8 frames of 16x32 x 80 channels) and
the quickstart's `video` stage (random params, one batch of its size: loss +
gradient of the trainable temporal layers per call), with the temporal ResBlocks'
convs as `layers.FrameTapConv` (one `(kt, 1)` conv over `b f (h w) c` for the
default `(3, 1, 1)` kernel; a sum over time taps of 2D convs for `(3, 3, 3)`) vs
`nn.Conv` 3D convolutions (same parameters), interleaved in one run.

  python bench/temporal_conv.py [--repeats=5]
"""

import argparse
import sys

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--repeats', type=int, default=5)
ARGS = PARSER.parse_args()

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import state as state_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = f'{common.REPO}/configs/moving_digits_quickstart.py:stage=video'


def conv_fn(conv_cls, kernel_size):
  """Gradient of sum(sin(conv(x))) w.r.t. params and input, one conv of `conv_cls`."""
  module = conv_cls(80, kernel_size, padding=tuple((k // 2, k // 2) for k in kernel_size))
  x = jax.random.normal(jax.random.key(0), (2, 8, 16, 32, 80))
  params = jax.jit(module.init)(jax.random.key(1), x)
  grad = jax.jit(jax.grad(lambda p, x: jax.numpy.sum(jax.numpy.sin(module.apply(p, x))),
                          argnums=(0, 1)))
  common.block(grad(params, x))
  return lambda: grad(params, x)


def step_fn(conv_cls, kernel_size):
  """Loss + gradient of the trainable params of the quickstart video stage, convs of `conv_cls`."""
  config = config_utils.override(config_utils.load_config(CONFIG), **{
      'model.unet.temporal.conv_kernel_size': kernel_size, 'init_from': None})
  stage = stages.get_stage(config.stage)(config)
  b, f, size = config.batch_size, config.data.num_frames, config.data.image_size
  batch = dict(video=jax.random.uniform(jax.random.key(0), (b, f, size, size, 3), minval=-1),
               labels=np.zeros((b, f), np.int32))
  original = layers.FrameTapConv
  layers.FrameTapConv = conv_cls
  try:
    params = jax.jit(stage.init_params)(jax.random.key(1), batch)
    labels = state_lib.trainable_labels(params, config.trainable)
    trainable = state_lib.partition(params, labels)
    step = jax.jit(jax.grad(lambda t, p: stage.loss_fn(
        state_lib.merge(t, p), batch, jax.random.key(2), np.int32(0))[0]))
    common.block(step(trainable[0], trainable[1]))
  finally:
    layers.FrameTapConv = original
  return lambda: step(trainable[0], trainable[1])


def main():
  cases = [(f'one conv gradient, kernel {kernel}, 2 x 8 x 16x32 x 80', conv_fn, kernel)
           for kernel in ((3, 1, 1), (3, 3, 3))]
  cases += [(f'video stage gradient, temporal kernel {kernel}', step_fn, kernel)
            for kernel in ((3, 1, 1), (3, 3, 3))]
  rows = []
  for what, make_fn, kernel in cases:
    times = common.interleaved({'taps': make_fn(layers.FrameTapConv, kernel),
                                'conv3d': make_fn(nn.Conv, kernel)}, ARGS.repeats)
    ratio = common.median(times['conv3d']) / common.median(times['taps'])
    rows.append([what, common.spread(times['taps']), common.spread(times['conv3d']),
                 f'{ratio:.2f}x'])
  common.report('Temporal convs on CPU', ['what', '2D convs (ours)', 'nn.Conv 3D', 'speed-up'],
                rows)
  sys.stdout.flush()

if __name__ == '__main__':
  main()
