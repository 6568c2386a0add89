"""3x3 stride-1 convolutions as Winograd F(m x m, 3 x 3) (Lavin & Gray, 2016).

Each m x m output tile is `A^T [(G g G^T) * (B^T d B)] A` of its (m + 2)^2 input
tile `d`: the convolution becomes (m + 2)^2 independent matmuls over channels,
with 9 m^2 / (m + 2)^2 times fewer multiplies than the direct one (2.25 for
m = 2, 4 for m = 4). XLA's CPU convolutions run a single device's small-channel
convolutions on one thread at about its matmul rate, so fewer multiplies is
the lever there (bench/RESULTS.md, figure 1). The tiles' transforms are sums of
strided slices, which XLA fuses; the kernel's is one matmul over the 9 taps
(as fast, and a third less to compile); `conv.conv2d` gives this a custom gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np

# (B^T, G, A^T) for output tile m; interpolation points 0, +-1 (m = 2) and 0, +-1, +-2 (m = 4).
_MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
TILES = tuple(_MATRICES)


def matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(B^T, G, A^T) of F(tile x tile, 3 x 3) as float64 arrays."""
  if tile not in _MATRICES:
    raise ValueError(f'Winograd tile {tile} is not one of {TILES}.')
  return tuple(np.asarray(m, np.float64) for m in _MATRICES[tile])


def _combine(matrix: np.ndarray, parts: list[jax.Array]) -> list[jax.Array]:
  """`[sum_k matrix[a, k] * parts[k] for a]`, skipping zeros and unit multiplies."""
  rows = []
  for coefficients in matrix:
    total = None
    for coefficient, part in zip(coefficients.tolist(), parts):
      if coefficient == 0:
        continue
      term = part if coefficient == 1 else -part if coefficient == -1 else part * coefficient
      total = term if total is None else total + term
    rows.append(total)
  return rows


def conv3x3(x: jax.Array, kernel: jax.Array, tile: int = 4) -> jax.Array:
  """`x (b, h, w, c)` convolved with `kernel (3, 3, c, o)`, stride 1, one pixel of zero padding.

  Equals `lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))` in
  NHWC/HWIO to float32 rounding; sums are float32 whatever the input dtype.
  """
  b_t, g, a_t = matrices(tile)
  alpha = tile + 2
  out_dtype = x.dtype
  x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
  batch, height, width, _ = x.shape
  tiles_h, tiles_w = -(-height // tile), -(-width // tile)
  x = jnp.pad(x, ((0, 0), (1, tiles_h * tile + 1 - height), (1, tiles_w * tile + 1 - width),
                  (0, 0)))

  def taps(array, axis, count):  # alpha strided views: tap k holds pixel tile * i + k.
    return [jax.lax.slice_in_dim(array, k, k + tile * (count - 1) + 1, tile, axis)
            for k in range(alpha)]

  rows = _combine(b_t, taps(x, 1, tiles_h))  # alpha x (b, th, W, c)
  v = jnp.stack([jnp.stack(_combine(b_t, taps(row, 2, tiles_w))) for row in rows])
  v = v.reshape(alpha, alpha, batch * tiles_h * tiles_w, -1)  # (a, a, b th tw, c)
  channels, features = kernel.shape[2:]
  g_g = np.kron(g, g).astype(np.float32)  # (a a, 3 3): G g G^T as one matmul over the taps.
  u = jnp.dot(g_g, kernel.reshape(9, channels * features)).reshape(alpha, alpha, channels,
                                                                   features)
  m = jax.lax.dot_general(v, u, (((3,), (2,)), ((0, 1), (0, 1))))  # (a, a, b th tw, o)
  rows = _combine(a_t, [m[a] for a in range(alpha)])  # tile x (a, b th tw, o)
  y = jnp.stack([jnp.stack(_combine(a_t, [row[k] for k in range(alpha)])) for row in rows])
  y = y.reshape(tile, tile, batch, tiles_h, tiles_w, -1)  # (i, j, b, th, tw, o)
  y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(batch, tiles_h * tile, tiles_w * tile, -1)
  return y[:, :height, :width].astype(out_dtype)
