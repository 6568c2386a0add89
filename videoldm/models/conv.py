"""2D convolutions that pick, per shape, the fastest of three exact forms on CPU.

XLA's CPU convolution is slow in two regimes that SD-size models live in
(bench/RESULTS.md, figure 1): few output positions with many channels (a
1280-channel 3x3 conv on 8x8 latents runs at a third of its matmul rate), and
3x3 convs with enough channels, where Winograd F(4x4, 3x3) needs 4x fewer
multiplies (F(2x2, 3x3) 2.25x). `conv2d` then runs one matmul over the image patches ('im2col') or
`winograd.conv3x3`; everything else, and every other backend, is XLA's conv.
`Conv2D` is `nn.Conv` (same parameters and initialisation) on `conv2d`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import winograd

Padding = tuple[tuple[int, int], tuple[int, int]]
IMPLEMENTATIONS = (None, 'xla', 'im2col', 'winograd')
# Winograd's tile transforms are memory-bound: they pay off with enough channels
# per pixel or activations small enough to stay in cache; F(4x4, 3x3)'s 36
# transformed taps (4x the kernel) pay off up to 512 x 512 channels, F(2x2, 3x3)'s
# 16 beyond (measured on a 2-core AVX-512 EPYC, bench/HISTORY.md).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_CACHED_ELEMENTS = 2**22  # Activations this small need no more channels than that.
WINOGRAD_WIDE_CHANNELS = 128  # Larger activations need at least this many.
WINOGRAD_LARGE_TILE_MAX_WEIGHTS = 512 * 512
# Below this many multiply-adds a conv takes about a millisecond whatever its form;
# the other forms' larger graphs would only lengthen compiles (a quickstart image
# train step: 15 s with XLA's convs, 40 s with every form).
MIN_MULTIPLY_ADDS = 2**26


def winograd_tile(channels: int, features: int) -> int:
  """F(tile x tile, 3 x 3): 4 while the transformed kernel stays cache-friendly, else 2."""
  return 4 if channels * features <= WINOGRAD_LARGE_TILE_MAX_WEIGHTS else 2


def choose(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: tuple[int, int],
           padding: Padding, dtype: Any, backend: str) -> str:
  """The form `conv2d(implementation=None)` runs for these shapes on `backend`."""
  if backend != 'cpu' or kernel_shape[:2] == (1, 1):
    return 'xla'
  batch, height, width, channels = x_shape
  (kh, kw), (sh, sw) = kernel_shape[:2], strides
  out_h = (height + sum(padding[0]) - kh) // sh + 1
  out_w = (width + sum(padding[1]) - kw) // sw + 1
  if batch * out_h * out_w * kh * kw * channels * kernel_shape[3] < MIN_MULTIPLY_ADDS:
    return 'xla'
  if batch * out_h * out_w <= channels:
    return 'im2col'
  wide_enough = channels >= (WINOGRAD_MIN_CHANNELS if batch * height * width * channels
                             <= WINOGRAD_CACHED_ELEMENTS else WINOGRAD_WIDE_CHANNELS)
  if (kernel_shape[:2] == (3, 3) and strides == (1, 1) and padding == ((1, 1), (1, 1))
      and dtype == jnp.float32 and wide_enough):
    return 'winograd'
  return 'xla'


def _im2col(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
            padding: Padding) -> jax.Array:
  """One matmul of the `(kh kw c)` patches of every output pixel with the kernel."""
  kh, kw, channels, features = kernel.shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  patches = jnp.stack([
      x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0], j:j + strides[1] * (out_w - 1) + 1:
        strides[1]] for i in range(kh) for j in range(kw)], axis=-2)  # (b, h', w', kh kw, c)
  kernel = kernel.reshape(kh * kw, channels, features)
  return jax.lax.dot_general(patches, kernel, (((3, 4), (0, 1)), ((), ())),
                             preferred_element_type=jnp.float32)  # (b, h', w', o)


def _xla(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
         padding: Padding) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Winograd 3x3 conv whose input gradient is again a conv `conv2d` picks the form of.

  Autodiff through the tile transforms scatters into padded copies (a video
  train step 17% slower than XLA's conv); the transposed conv does not.
  """
  return winograd.conv3x3(x, kernel, winograd_tile(*kernel.shape[2:]))


def _winograd_forward(x, kernel):
  return _winograd(x, kernel), (x, kernel)


def _winograd_backward(residuals, dy):
  x, kernel = residuals
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (3, 3, o, c): the transposed conv.
  dx = conv2d(dy, flipped.astype(dy.dtype), (1, 1), ((1, 1), (1, 1)))
  _, kernel_vjp = jax.vjp(lambda k: _xla(x, k, (1, 1), ((1, 1), (1, 1))), kernel)
  return dx.astype(x.dtype), kernel_vjp(dy.astype(kernel.dtype))[0]


_winograd.defvjp(_winograd_forward, _winograd_backward)


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int] = (1, 1),
           padding: Padding = ((0, 0), (0, 0)), implementation: str | None = None) -> jax.Array:
  """`x (b, h, w, c)` convolved with `kernel (kh, kw, c, o)`: XLA's NHWC conv, any form.

  `implementation`: None (`choose`), 'xla', 'im2col' or 'winograd' (3x3,
  stride 1, padding 1 only). The result has `x`'s dtype.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'Convolution implementation {implementation!r} is not one of '
                     f'{IMPLEMENTATIONS}.')
  strides, padding = tuple(strides), tuple(tuple(pad) for pad in padding)
  if implementation is None:
    implementation = choose(x.shape, kernel.shape, strides, padding, x.dtype,
                            jax.default_backend())
  if implementation == 'im2col':
    return _im2col(x, kernel, strides, padding).astype(x.dtype)
  if implementation == 'winograd':
    if kernel.shape[:2] != (3, 3) or strides != (1, 1) or padding != ((1, 1), (1, 1)):
      raise ValueError(f'Winograd convolution needs a 3x3 kernel, stride 1 and padding 1; '
                       f'got kernel {kernel.shape[:2]}, strides {strides}, padding {padding}.')
    return _winograd(x, kernel)
  return _xla(x, kernel, strides, padding)


class Conv2D(nn.Module):
  """`nn.Conv` for `(b, h, w, c)` with explicit padding, run by `conv2d`.

  Parameters (`kernel (kh, kw, c, features)`, `bias`), their initialisers and
  `dtype` promotion are `nn.Conv`'s, so the two share checkpoints and init.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = ((0, 0), (0, 0))
  use_bias: bool = True
  dtype: Any = None
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = (self.param('bias', nn.initializers.zeros, (self.features,))
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, self.implementation)
    return y if bias is None else y + bias
