"""`diffusion.tiling`: blended overlapping tiles reproduce the whole-frame result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.diffusion import tiling


def test_tile_starts_cover_the_axis_with_the_overlap():
  assert tiling.tile_starts(10, 10, 2) == [0]
  assert tiling.tile_starts(10, 16, 2) == [0]
  assert tiling.tile_starts(20, 8, 2) == [0, 6, 12]
  with pytest.raises(ValueError, match=r'Tile overlap 8 must be in \[0, tile=8\)'):
    tiling.tile_starts(20, 8, 8)


def test_weights_of_overlapping_tiles_are_positive_and_one_at_frame_borders():
  size, tile, overlap = 20, 8, 3
  total = np.zeros(size)
  for start in tiling.tile_starts(size, tile, overlap):
    w = np.asarray(tiling.ramp(jnp.asarray(start), tile, size, overlap))
    if start == 0:
      assert w[0] == 1.0
    if start + tile == size:
      assert w[-1] == 1.0
    total[start:start + tile] += w
  assert total.min() > 0


@pytest.mark.parametrize('scale', [1, 2])
def test_a_pointwise_function_is_unchanged_by_tiling(scale):
  """Blending identical values gives them back: the weights are normalised everywhere."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 20, 12, 4))  # b f h w c
  fn = lambda t: jnp.repeat(jnp.repeat(jnp.tanh(2 * t[..., :3] + 1), scale, -3), scale, -2)
  tiled = tiling.tiled_apply(fn, x, (8, 8), overlap=2, scale=scale)
  np.testing.assert_allclose(tiled, fn(x), rtol=1e-6, atol=1e-6)


def test_one_tile_over_the_whole_frame_is_the_untiled_call_exactly():
  x = jax.random.normal(jax.random.key(1), (1, 16, 16, 2))
  fn = lambda t: jax.scipy.signal.convolve(t, jnp.ones((1, 3, 3, 1)) / 9, mode='same')
  assert np.array_equal(tiling.tiled_apply(fn, x, (16, 16), 4), fn(x))
  assert np.array_equal(tiling.tiled_apply(fn, x, (0, 0), 4), fn(x))


def test_a_local_function_differs_only_near_tile_edges():
  """A 3x3 blur sees zero padding at a tile's inner edges: each blended value mixes
  tiles' outputs, and only values within 1 pixel of an inner edge are off."""
  x = jax.random.normal(jax.random.key(2), (1, 24, 24, 1))
  fn = lambda t: jax.scipy.signal.convolve(t, jnp.ones((1, 3, 3, 1)) / 9, mode='same')
  difference = np.abs(np.asarray(tiling.tiled_apply(fn, x, (12, 12), 4) - fn(x)))[0, ..., 0]
  assert difference.max() > 0
  starts = tiling.tile_starts(24, 12, 4)
  assert starts == [0, 8, 12]
  inner_edges = {s for s in starts if s > 0} | {s + 11 for s in starts if s + 12 < 24}
  assert inner_edges == {8, 11, 12, 19}
  far = [i for i in range(24) if i not in inner_edges]
  assert difference[np.ix_(far, far)].max() < 1e-6
