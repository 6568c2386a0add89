"""Convolutional-in-space application: a function over overlapping spatial tiles, blended.

Paper Sec. 3.4 applies the upsampler convolutionally to frames larger than it
was trained on; `tiled_apply` bounds the memory of doing so by running
`fn` on one `(tile_h, tile_w)` window at a time (a `lax.scan`, so XLA keeps one
tile's activations live) and blending the overlapping outputs with weights
that ramp linearly across each overlap (interior tile edges only). Where one
tile covers the input, `fn` runs once on the whole input, so tiled equals
untiled exactly.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Tile offsets along one axis: every `tile - overlap`, the last flush with the end."""
  if tile >= size:
    return [0]
  if not 0 <= overlap < tile:
    raise ValueError(f'Tile overlap {overlap} must be in [0, tile={tile}).')
  starts = list(range(0, size - tile, tile - overlap))
  return starts + [size - tile]


def ramp(start: jax.Array, tile: int, size: int, overlap: int) -> jax.Array:
  """`(tile,)` blend weights of a tile at `start`: a linear ramp over `overlap` at each edge
  inside the frame, 1 at frame borders."""
  position = jnp.arange(tile, dtype=jnp.float32)
  up = jnp.where(start > 0, (position + 1) / (overlap + 1), 1.0)
  down = jnp.where(start + tile < size, (tile - position) / (overlap + 1), 1.0)
  return jnp.clip(jnp.minimum(up, down), 0.0, 1.0)


def tiled_apply(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: tuple[int, int],
                overlap: int, scale: int = 1) -> jax.Array:
  """`fn` over `(tile_h, tile_w)` windows of `x` `(..., H, W, C)`, blended.

  Args:
    fn: maps `(..., th, tw, C)` to `(..., scale th, scale tw, C_out)` (every leading
      axis kept); it must not depend on where the tile lies.
    x: the input; spatial axes are -3 and -2.
    tile: the window `(th, tw)` in input pixels (clipped to the input; a 0 entry
      means the whole axis).
    overlap: input pixels shared by neighbouring tiles.
    scale: output pixels per input pixel (e.g. 4 for an f=4 decoder).

  Returns:
    `(..., scale H, scale W, C_out)`.
  """
  *lead, height, width, _ = x.shape
  th = min(tile[0] or height, height)
  tw = min(tile[1] or width, width)
  if th == height and tw == width:
    return fn(x)
  ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
  grid = np.array([(y, x_) for y in ys for x_ in xs], np.int32)  # (tiles, 2)
  rank = x.ndim
  window = lambda a, y, x_, h, w: jax.lax.dynamic_slice(
      a, (0,) * (rank - 3) + (y, x_, 0), tuple(lead) + (h, w, a.shape[-1]))
  out_shape = jax.eval_shape(fn, jax.ShapeDtypeStruct(tuple(lead) + (th, tw, x.shape[-1]),
                                                      x.dtype))
  out_h, out_w = scale * height, scale * width
  total = jnp.zeros(tuple(lead) + (out_h, out_w, out_shape.shape[-1]), jnp.float32)
  weights = jnp.zeros((out_h, out_w, 1), jnp.float32)

  def add_tile(carry, start):
    total, weights = carry
    y, x_ = start[0], start[1]
    out = fn(window(x, y, x_, th, tw)).astype(jnp.float32)  # (..., s th, s tw, C_out)
    w = (ramp(scale * y, scale * th, out_h, scale * overlap)[:, None, None] *
         ramp(scale * x_, scale * tw, out_w, scale * overlap)[None, :, None])  # (s th, s tw, 1)
    at = (0,) * (rank - 3) + (scale * y, scale * x_, 0)
    current = jax.lax.dynamic_slice(total, at, out.shape)
    total = jax.lax.dynamic_update_slice(total, current + w * out, at)
    current_w = jax.lax.dynamic_slice(weights, (scale * y, scale * x_, 0), w.shape)
    weights = jax.lax.dynamic_update_slice(weights, current_w + w, (scale * y, scale * x_, 0))
    return (total, weights), None

  (total, weights), _ = jax.lax.scan(add_tile, (total, weights), jnp.asarray(grid))
  return (total / weights).astype(out_shape.dtype)
