"""Figure 5: factorised (spatial + temporal) vs full space-time attention.

Self-attention with q/k/v/out projections (`videoldm.models.attention.Attention`)
on a video of `f` frames at `s x s`, `c` channels: spatial attention over
`(b f) (h w)` tokens plus temporal attention over `(b h w) f` tokens, vs one
attention over `b (f h w)` tokens. FLOP ratio (f h w) / (h w + f) -> f.
Both use the library's attention: on CPU, sequences of 256+ tokens run in
query blocks (`attention.dot_product_attention`), which also bounds the
memory of full attention over 16k tokens.

Second table: the temporal-attention variants of `temporal.TemporalTransformer`
(`temporal.attention` of the video U-Net: 'temporal', 'full', 'causal',
'sparse_causal'), the whole layer (norms, projections, frame embedding, one
block, no text), same params; time and peak memory (XLA's compiled memory
analysis: arguments + outputs + temporaries) as ratios against 'temporal'.

  python bench/factorized_attention.py [--repeats=3] [--channels=64]
"""

import argparse

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--threads', type=int, default=0, help='0 = all cores')
PARSER.add_argument('--channels', type=int, default=64)
PARSER.add_argument('--heads', type=int, default=1)
PARSER.add_argument('--repeats', type=int, default=3)
PARSER.add_argument('--cases', default='4x16,8x16,16x16,16x8,16x32',
                    help='frames x size, comma-separated')
PARSER.add_argument('--variant_cases', default='4x16,8x16,16x16,16x8,16x32',
                    help='frames x size for the temporal-attention variants; empty = skip')
ARGS = PARSER.parse_args()
if ARGS.threads:
  common.configure_cpu_threads(ARGS.threads)

import einops  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm.models import attention  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import temporal  # pylint: disable=g-import-not-at-top,wrong-import-position


def peak_bytes(fn, *args) -> int:
  """Arguments + outputs + temporaries (less aliased) of `fn` compiled for `args`."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def attention_scores(variant: str, f: int, hw: int) -> int:
  """Query-key scores one head computes (masked ones included) for a clip."""
  return {'temporal': hw * f * f, 'full': (f * hw) ** 2, 'causal': (f * hw) ** 2,
          'sparse_causal': f * hw * 3 * hw}[variant]


def variants_table():
  """Time and peak memory of each `TemporalTransformer` attention variant vs 'temporal'."""
  c, heads = ARGS.channels, ARGS.heads
  variants = temporal.ATTENTION_VARIANTS
  layers = {v: temporal.TemporalTransformer(heads, c // heads, attention_variant=v)
            for v in variants}
  params = layers['temporal'].init(jax.random.key(0), jnp.zeros((2, 8, 8, c)), 2)
  rows = []
  for case in ARGS.variant_cases.split(','):
    f, s = (int(x) for x in case.split('x'))
    frames = jax.random.normal(jax.random.key(f * s), (f, s, s, c))  # (b f) h w c, b = 1
    fns = {v: jax.jit(lambda p, x, v=v: layers[v].apply(p, x, f)) for v in variants}
    memory = {v: peak_bytes(lambda p, x, v=v: layers[v].apply(p, x, f), params, frames)
              for v in variants}
    times = common.interleaved({v: (lambda v=v: fns[v](params, frames)) for v in variants},
                               ARGS.repeats)
    base_t, base_m = common.median(times['temporal']), memory['temporal']
    base_scores = attention_scores('temporal', f, s * s)
    for v in variants:
      t = common.median(times[v])
      rows.append([f, f'{s}x{s}', f * s * s, v, common.spread(times[v]), f'{t / base_t:.1f}x',
                   f'{memory[v] / 2**20:.1f}', f'{memory[v] / base_m:.1f}x',
                   f'{attention_scores(v, f, s * s) / base_scores:.0f}x'])
  common.report('Figure 5b: temporal-attention variants (temporal.attention)',
                ['frames', 'size', 'tokens', 'variant', 'time', 'time vs temporal',
                 'peak MiB', 'memory vs temporal', 'scores vs temporal'], rows,
                [f'TemporalTransformer, {c} channels, {heads} head(s), depth 1, batch 1, '
                 f'float32; median (min-max) of {ARGS.repeats} interleaved runs; peak = XLA '
                 'compiled memory analysis (arguments + outputs + temporaries)'])


def main():
  c, heads = ARGS.channels, ARGS.heads
  layer = attention.Attention(heads, c // heads)
  params = layer.init(jax.random.key(0), jnp.zeros((1, 4, c)))

  def full_attention(p, video):
    b, f, h, w, _ = video.shape
    tokens = einops.rearrange(video, 'b f h w c -> b (f h w) c')  # (b, f h w, c)
    return einops.rearrange(layer.apply(p, tokens), 'b (f h w) c -> b f h w c', f=f, h=h, w=w)

  def factorised(p, video):
    b, f, h, w, _ = video.shape
    spatial = einops.rearrange(video, 'b f h w c -> (b f) (h w) c')  # ((b f), h w, c)
    out = einops.rearrange(layer.apply(p, spatial), '(b f) (h w) c -> (b h w) f c', f=f, h=h)
    out = layer.apply(p, out)  # ((b h w), f, c)
    return einops.rearrange(out, '(b h w) f c -> b f h w c', h=h, w=w)

  full_fn, fact_fn = jax.jit(full_attention), jax.jit(factorised)
  rows = []
  for case in ARGS.cases.split(','):
    f, s = (int(x) for x in case.split('x'))
    video = jax.random.normal(jax.random.key(f * s), (1, f, s, s, c))
    times = common.interleaved({'full': lambda: full_fn(params, video),
                                'fact': lambda: fact_fn(params, video)}, ARGS.repeats)
    full_t, fact_t = common.median(times['full']), common.median(times['fact'])
    hw = s * s
    rows.append([f, f'{s}x{s}', f * hw, common.spread(times['full']), common.spread(times['fact']),
                 f'{full_t / fact_t:.1f}x', f'{f * hw / (hw + f):.1f}x'])
  common.report('Figure 5: full space-time vs factorised attention',
                ['frames', 'size', 'tokens', 'full', 'spatial + temporal', 'time ratio',
                 'attention FLOP ratio'], rows,
                [f'{c} channels, {heads} head(s), batch 1, float32; median (min-max) of '
                 f'{ARGS.repeats} interleaved runs'])
  if ARGS.variant_cases:
    variants_table()


if __name__ == '__main__':
  main()
