"""Figure 4: sampler overhead and batched guidance.

The `video` stage (runlocal config, random params) with context + label
guidance: one 50-step DDIM window as one compiled `lax.scan` vs 50 x one
jitted guided denoiser call; and classifier-free guidance batched into one
model call (batch 2b) vs two model calls (batch b each), both inside one jit.

  python bench/sampler_overhead.py [--steps=50] [--repeats=5]
"""

import argparse
import sys

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--threads', type=int, default=0, help='0 = all cores')
PARSER.add_argument('--steps', type=int, default=50)
PARSER.add_argument('--batch', type=int, default=2)
PARSER.add_argument('--repeats', type=int, default=5)
ARGS = PARSER.parse_args()
if ARGS.threads:
  common.configure_cpu_threads(ARGS.threads)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, common.TESTS)
import stage_helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.diffusion import guidance  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import unet as unet_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.stages import denoising  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  model = stage_helpers.load_stage('video', **{'sampling.num_steps': ARGS.steps})
  stage, params = model.stage, model.params
  config = stage.config
  b, f = ARGS.batch, config.data.num_frames
  latent_shape = (b, f, 8, 8, stage.autoencoder.config.latent_channels)
  context = jax.random.normal(jax.random.key(1), latent_shape)
  mask = denoising.leading_frames_mask(jnp.full((b,), 2), f)
  labels = jnp.arange(b, dtype=jnp.int32) % 10
  null = jnp.full_like(labels, unet_lib.null_class_label(config.model.unet))
  key = jax.random.key(0)

  options = stage.sampling_options()
  window = jax.jit(lambda p, c, m, y, k: stage.sample_window(p, c, m, y, k, options))
  conds = [(null, jnp.zeros_like(mask)), (null, mask), (labels, mask)]
  scales = [config.sampling.context_guidance, config.sampling.guidance_scale]

  def model_fn(p, x, t, cond):
    repeats = x.shape[0] // b
    return stage.apply_unet(p, x, t, cond[0], jnp.concatenate([context] * repeats), cond[1])

  @jax.jit
  def one_call(p, x, t):
    return guidance.make_guided_denoiser(lambda x, t, c: model_fn(p, x, t, c), conds, scales)(x, t)

  x = jax.random.normal(key, latent_shape)
  t = jnp.full((b,), 500, jnp.int32)

  @jax.jit
  def cfg_batched(p, x, t):
    return guidance.make_guided_denoiser(lambda x, t, c: model_fn(p, x, t, c),
                                         [(null, mask), (labels, mask)], [2.0])(x, t)

  @jax.jit
  def cfg_two_calls(p, x, t):
    uncond = model_fn(p, x, t, (null, mask))
    cond = model_fn(p, x, t, (labels, mask))
    return guidance.combine_guided([uncond, cond], [2.0])

  def call_loop():  # The same work as the window, as N separate jitted calls.
    out = x
    for index in range(ARGS.steps):
      out = one_call(params, out, jnp.full((b,), 999 - 20 * index, jnp.int32))
    return out

  times = common.interleaved({
      'window': lambda: window(params, context, mask, labels, key),
      'loop': call_loop,
      'call': lambda: one_call(params, x, t),
      'batched': lambda: cfg_batched(params, x, t),
      'two': lambda: cfg_two_calls(params, x, t),
  }, ARGS.repeats, warmup=2)
  window_t, call_t = common.median(times['window']), common.median(times['call'])
  overhead = window_t / (ARGS.steps * call_t) - 1
  overhead_min = min(times['window']) / (ARGS.steps * min(times['call'])) - 1
  loop_ratio = window_t / common.median(times['loop'])
  batched_t, two_t = common.median(times['batched']), common.median(times['two'])
  two_min = min(times['two']) / min(times['batched'])
  rows = [
      [f'{ARGS.steps}-step DDIM window (one scan)', common.spread(times['window']), ''],
      ['one guided denoiser call (3 branches)', common.spread(times['call']), ''],
      [f'window / ({ARGS.steps} x call) - 1 (medians)', '', f'{100 * overhead:+.1f}%'],
      [f'window / ({ARGS.steps} x call) - 1 (fastest runs)', '', f'{100 * overhead_min:+.1f}%'],
      [f'Python loop of {ARGS.steps} calls', common.spread(times['loop']), ''],
      ['window / loop (medians)', '', f'{loop_ratio:.2f}x'],
      ['CFG batched: one call on 2b', common.spread(times['batched']), ''],
      ['CFG unbatched: two calls on b', common.spread(times['two']), ''],
      ['two calls / batched (medians)', '', f'{two_t / batched_t:.2f}x'],
      ['two calls / batched (fastest runs)', '', f'{two_min:.2f}x'],
  ]
  common.report('Figure 4: sampler overhead and batched guidance', ['what', 'time', 'ratio'],
                rows, [f'video stage runlocal U-Net (32/64 channels), batch {b} x {f} frames of '
                       f'8x8x4 latents; median (min-max) of {ARGS.repeats} interleaved runs'])


if __name__ == '__main__':
  main()
