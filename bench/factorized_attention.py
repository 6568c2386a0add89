"""Figure 5: factorised (spatial + temporal) vs full space-time attention.

Self-attention with q/k/v/out projections (`videoldm.models.attention.Attention`)
on a video of `f` frames at `s x s`, `c` channels: spatial attention over
`(b f) (h w)` tokens plus temporal attention over `(b h w) f` tokens, vs one
attention over `b (f h w)` tokens. FLOP ratio (f h w) / (h w + f) -> f.
Both use the library's attention: on CPU, sequences of 256+ tokens run in
query blocks (`attention.dot_product_attention`), which also bounds the
memory of full attention over 16k tokens.

  python bench/factorized_attention.py [--repeats=3] [--channels=64]
"""

import argparse

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--threads', type=int, default=0, help='0 = all cores')
PARSER.add_argument('--channels', type=int, default=64)
PARSER.add_argument('--heads', type=int, default=1)
PARSER.add_argument('--repeats', type=int, default=3)
PARSER.add_argument('--cases', default='4x16,8x16,16x16,16x8,16x32')
ARGS = PARSER.parse_args()
if ARGS.threads:
  common.configure_cpu_threads(ARGS.threads)

import einops  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm.models import attention  # pylint: disable=g-import-not-at-top,wrong-import-position

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


if __name__ == '__main__':
  main()
