"""The CPU convolution forms (im2col, Winograd) against XLA's convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import conv
from videoldm.models import winograd


@pytest.mark.parametrize('tile', winograd.TILES)
def test_winograd_matrices_compute_a_1d_correlation_exactly(tile):
  b_t, g, a_t = winograd.matrices(tile)
  rng = np.random.default_rng(tile)
  d, taps = rng.standard_normal(tile + 2), rng.standard_normal(3)
  expected = np.array([d[i:i + 3] @ taps for i in range(tile)])
  np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ d)), expected, rtol=1e-12, atol=1e-12)


def _xla(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


CASES = [  # implementation, x shape, kernel shape, strides, padding
    ('winograd', (2, 9, 7, 5), (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1))),
    ('winograd', (1, 8, 8, 4), (3, 3, 4, 3), (1, 1), ((1, 1), (1, 1))),
    ('im2col', (2, 9, 7, 5), (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1))),
    ('im2col', (2, 9, 8, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1))),
    ('im2col', (1, 8, 8, 3), (3, 3, 3, 4), (2, 2), ((0, 1), (0, 1))),
    ('im2col', (1, 6, 5, 3), (4, 4, 3, 2), (2, 2), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize('implementation,x_shape,kernel_shape,strides,padding', CASES)
def test_conv2d_forms_match_xla_values_and_gradients(implementation, x_shape, kernel_shape,
                                                     strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
  ours = lambda x, k: conv.conv2d(x, k, strides, padding, implementation)
  theirs = lambda x, k: _xla(x, k, strides, padding)
  np.testing.assert_allclose(ours(x, kernel), theirs(x, kernel), rtol=1e-5, atol=2e-5)
  cotangent = jnp.asarray(rng.standard_normal(theirs(x, kernel).shape), jnp.float32)
  loss = lambda fn: lambda x, k: jnp.sum(fn(x, k) * cotangent)
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                       jax.grad(loss(theirs), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize('implementation', ['im2col', 'winograd'])
def test_conv2d_forms_keep_bfloat16_within_one_rounding_of_xla(implementation):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.bfloat16)
  padding = ((1, 1), (1, 1))
  ours = conv.conv2d(x, kernel, (1, 1), padding, implementation)
  exact = _xla(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), padding)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=2**-7, atol=2**-6)


def test_conv2d_module_shares_nn_convs_parameters_initialisation_and_outputs():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 6, 3)), jnp.float32)
  padding = ((1, 1), (1, 1))
  ours = conv.Conv2D(4, (3, 3), padding=padding, implementation='im2col')
  theirs = nn.Conv(4, (3, 3), padding=padding)
  key = jax.random.PRNGKey(0)
  params, reference = ours.init(key, x), theirs.init(key, x)
  jax.tree.map(np.testing.assert_array_equal, params, reference)
  params = jax.tree.map(lambda p: p + 0.5, params)  # A non-zero bias too.
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)


@pytest.mark.parametrize('x_shape,kernel_shape,strides,backend,expected', [
    ((1, 8, 8, 1280), (3, 3, 1280, 1280), (1, 1), 'cpu', 'im2col'),  # 64 positions, 1280 ch
    ((1, 16, 16, 640), (3, 3, 640, 640), (2, 2), 'cpu', 'im2col'),  # strided down to 8x8
    ((4, 64, 64, 256), (3, 3, 256, 256), (1, 1), 'cpu', 'winograd'),  # 1024 tiles
    ((4, 256, 256, 64), (3, 3, 64, 64), (1, 1), 'cpu', 'xla'),  # too few channels
    ((4, 32, 32, 64), (3, 3, 64, 64), (1, 1), 'cpu', 'winograd'),  # small enough for cache
    ((1, 32, 32, 32), (3, 3, 32, 32), (1, 1), 'cpu', 'xla'),  # too few channels
    ((8, 4, 4, 64), (3, 3, 64, 64), (1, 1), 'cpu', 'xla'),  # 2^22 multiply-adds: too little work
    ((1, 8, 8, 1280), (1, 1, 1280, 1280), (1, 1), 'cpu', 'xla'),  # 1x1: a matmul already
    ((1, 8, 8, 1280), (3, 3, 1280, 1280), (1, 1), 'gpu', 'xla'),
])
def test_choose_picks_the_form_the_cpu_measurements_favour(x_shape, kernel_shape, strides,
                                                           backend, expected):
  assert conv.choose(x_shape, kernel_shape, strides, ((1, 1), (1, 1)), jnp.float32,
                     backend) == expected


def test_winograd_tile_is_4_up_to_512_by_512_channels_then_2():
  assert [conv.winograd_tile(c, o) for c, o in [(64, 64), (512, 512), (640, 640), (512, 640)]] == [
      4, 4, 2, 2]


def test_conv2d_rejects_an_unknown_form_and_winograd_off_its_shape():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="'fft' is not one of"):
    conv.conv2d(x, kernel, implementation='fft')
  with pytest.raises(ValueError, match=r'needs a 3x3 kernel, stride 1 and padding 1; got kernel '
                                       r'\(3, 3\), strides \(2, 2\)'):
    conv.conv2d(x, kernel, (2, 2), ((1, 1), (1, 1)), 'winograd')
  with pytest.raises(ValueError, match='Winograd tile 3 is not one of'):
    winograd.matrices(3)
