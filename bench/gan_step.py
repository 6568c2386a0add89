"""Adversarial autoencoder steps on CPU: 3D convs as time taps, and lax.cond vs every step.

The quickstart configs (`autoencoder` and `decoder` stages, random params, one
batch of the quickstart's size), one loss + gradient per call:

  * the 3D patch discriminator's gradient (input and params) with its convs as
    2D time taps (`FrameTapConv`) vs `nn.Conv` 3D convolutions;
  * the whole decoder / autoencoder loss + gradient with the discriminator
    active, computed every step (CPU default) vs inside `lax.cond` (the
    accelerator path, forced by reporting a 'gpu' backend to `gan`).

  python bench/gan_step.py [--repeats=5]
"""

import argparse
import sys

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--repeats', type=int, default=5)
ARGS = PARSER.parse_args()

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import discriminator  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.stages import gan  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = f'{common.REPO}/configs/moving_digits_quickstart.py:stage={{}}'


def disc_grad_fn(conv_cls):
  """Gradient of the 3D discriminator's mean logit w.r.t. params and input, convs of `conv_cls`."""
  original = layers.FrameTapConv
  layers.FrameTapConv = conv_cls
  try:
    module = discriminator.PatchDiscriminator3D(64, 2)
    video = jax.random.normal(jax.random.key(0), (8, 8, 32, 32, 3))
    params = jax.jit(module.init)(jax.random.key(1), video)
    grad = jax.jit(jax.grad(lambda p, x: jnp.mean(module.apply(p, x)), argnums=(0, 1)))
    common.block(grad(params, video))
  finally:
    layers.FrameTapConv = original
  return lambda: grad(params, video)


def stage_step_fn(stage_name, batch_shape, backend):
  """Loss + gradient of a quickstart stage past disc_start, as `gan` would build it on `backend`."""
  config = config_utils.load_config(CONFIG.format(stage_name))
  config.model.loss.disc_start = 0 if stage_name == 'decoder' else 10
  stage = stages.get_stage(stage_name)(config)
  batch = dict(video=jax.random.uniform(jax.random.key(0), batch_shape, minval=-1, maxval=1))
  params = jax.jit(stage.init_params)(jax.random.key(1), batch)
  real_backend = gan.jax.default_backend
  gan.jax.default_backend = lambda: backend
  try:
    schedule = gan.discriminator_schedule(config.model.loss, config.total_steps)
    if stage_name == 'decoder' and backend != 'cpu':  # disc_start 0 never uses the cond:
      config.model.loss.disc_start = 1  # start at 1 and time step 5, as a run crossing it.
      schedule = gan.discriminator_schedule(config.model.loss, config.total_steps)
    step = jax.jit(jax.value_and_grad(lambda p: stage.loss_fn(p, batch, jax.random.key(2),
                                                              jnp.int32(20))[0]))
    common.block(step(params))
  finally:
    gan.jax.default_backend = real_backend
  return (lambda: step(params)), schedule


def main():
  rows = []
  times = common.interleaved({'taps': disc_grad_fn(layers.FrameTapConv),
                              'conv3d': disc_grad_fn(nn.Conv)}, ARGS.repeats)
  ratio = common.median(times['conv3d']) / common.median(times['taps'])
  rows.append(['3D discriminator gradient (8 x 8 x 32x32)', common.spread(times['taps']),
               common.spread(times['conv3d']), f'{ratio:.1f}x'])
  for name, shape in (('decoder', (8, 8, 32, 32, 3)), ('autoencoder', (8, 4, 32, 32, 3))):
    every_step, every_name = stage_step_fn(name, shape, 'cpu')
    cond, cond_name = stage_step_fn(name, shape, 'gpu')
    assert (every_name, cond_name) == ('every_step', 'cond'), (every_name, cond_name)
    times = common.interleaved({'every_step': every_step, 'cond': cond}, ARGS.repeats)
    ratio = common.median(times['cond']) / common.median(times['every_step'])
    rows.append([f'{name} stage loss + gradient, discriminator on',
                 common.spread(times['every_step']), common.spread(times['cond']),
                 f'{ratio:.1f}x'])
  common.report('Adversarial steps on CPU', ['what', 'ours', 'before', 'speed-up'], rows, notes=[
      'ours: 3D convs as 2D time taps; the discriminator computed every step (CPU).',
      'before: nn.Conv 3D convs; the discriminator inside lax.cond (the accelerator path).'])
  sys.stdout.flush()


if __name__ == '__main__':
  main()
