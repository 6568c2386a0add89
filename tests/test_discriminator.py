"""Patch discriminators (shapes, temporal receptive field) and GAN loss helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import discriminator


def _init_apply_shapes(module, x):
  """Parameter and logit shapes by abstract evaluation (nothing is compiled)."""
  params = jax.eval_shape(module.init, jax.random.key(0), x)
  return params, jax.eval_shape(module.apply, params, x)


def test_2d_patch_logits_shape_and_params():
  # 64 -> 32 -> 16 -> 8 (stride 2), then 7 -> 6 (4x4 stride 1, pad 1), as pix2pix.
  module = discriminator.PatchDiscriminator2D(base_channels=8, num_layers=3)
  params, logits = _init_apply_shapes(module, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert logits.shape == (2, 6, 6, 1)
  shapes = jax.tree_util.tree_map(lambda leaf: leaf.shape, params['params'])
  assert shapes['convs_2']['kernel'] == (4, 4, 32, 64)
  assert 'bias' not in shapes['convs_0']  # GroupNorm supplies the shift.
  assert shapes['conv_out']['kernel'] == (4, 4, 64, 1)


def test_2d_without_norm_has_biases_and_no_norm_params():
  module = discriminator.PatchDiscriminator2D(base_channels=8, num_layers=2, norm='none')
  params, logits = _init_apply_shapes(module, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert logits.shape == (1, 6, 6, 1)  # 32 -> 16 -> 8 -> 7 -> 6.
  assert not any(name.startswith('norms_') for name in params['params'])
  assert 'bias' in params['params']['convs_0']


@pytest.mark.parametrize('frames, out_frames', [(1, 1), (2, 2), (5, 3), (8, 2)])
def test_3d_patch_logits_shape_for_any_frame_count(frames, out_frames):
  # Time stride 2 only while >= 4 frames remain: 8 -> 4 -> 2 -> 2; 5 -> 3 -> 3.
  module = discriminator.PatchDiscriminator3D(base_channels=8, num_layers=3)
  _, logits = _init_apply_shapes(module, jax.ShapeDtypeStruct((2, frames, 32, 32, 3), jnp.float32))
  assert logits.shape == (2, out_frames, 2, 2, 1)


def test_3d_discriminator_sees_frame_order():
  module = discriminator.PatchDiscriminator3D(base_channels=8, num_layers=2)
  video = jax.random.normal(jax.random.key(1), (2, 3, 32, 32, 3))
  params = jax.jit(module.init)(jax.random.key(0), video)
  apply = jax.jit(module.apply)
  logits = apply(params, video)
  reversed_logits = apply(params, video[:, ::-1])
  assert jnp.abs(logits - reversed_logits[:, ::-1]).max() > 1e-4
  # Examples stay independent: changing video 1 leaves video 0's logits alone.
  changed = apply(params, video.at[1].multiply(-1.0))
  np.testing.assert_array_equal(changed[0], logits[0])


@pytest.mark.parametrize('module, shape, match', [
    (discriminator.PatchDiscriminator2D(8, 3), (1, 16, 16, 3), '16x16 pixels'),
    (discriminator.PatchDiscriminator2D(8, 3, norm='batch'), (1, 64, 64, 3), "'batch'"),
    (discriminator.PatchDiscriminator3D(8, 2), (1, 32, 32, 3), r'\(b, f, h, w, c\)'),
    (discriminator.PatchDiscriminator3D(8, 2, time_kernel=2), (1, 2, 32, 32, 3), 'time_kernel=2'),
])
def test_bad_inputs_raise(module, shape, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_hinge_and_vanilla_d_losses_by_hand():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.0])
  # relu(1 - real) = [0, .5, 2]; relu(1 + fake) = [0, 1, 2].
  np.testing.assert_allclose(discriminator.hinge_d_loss(real, fake),
                             0.5 * (2.5 / 3 + 3.0 / 3), rtol=1e-6)
  softplus = lambda v: np.log1p(np.exp(v))
  expected = 0.5 * (np.mean(softplus(-np.array(real))) + np.mean(softplus(np.array(fake))))
  np.testing.assert_allclose(discriminator.vanilla_d_loss(real, fake), expected, rtol=1e-6)


def test_generator_adv_loss_by_hand():
  np.testing.assert_allclose(discriminator.generator_adv_loss(jnp.array([[1.0, 2.0, 6.0]])),
                             -3.0)


def test_adaptive_weight_by_hand():
  nll_grads = {'kernel': jnp.array([3.0, 0.0]), 'bias': jnp.array([4.0])}  # ||.|| = 5.
  g_grads = jnp.array([[1.0, 2.0], [2.0, 0.0]])  # ||.|| = 3.
  np.testing.assert_allclose(discriminator.adaptive_weight(nll_grads, g_grads),
                             5.0 / (3.0 + 1e-4), rtol=1e-6)
  # A vanishing generator gradient is clipped at max_weight.
  np.testing.assert_allclose(discriminator.adaptive_weight(nll_grads, jnp.zeros(2)), 1e4)
  np.testing.assert_allclose(
      discriminator.adaptive_weight(nll_grads, jnp.zeros(2), max_weight=10.0), 10.0)
  # The weight is a constant for the optimiser: no gradient flows through it.
  grad = jax.grad(lambda g: discriminator.adaptive_weight(nll_grads, g))(g_grads)
  np.testing.assert_array_equal(grad, 0.0)


def test_adopt_weight_switches_on_at_threshold_under_jit():
  adopt = jax.jit(lambda step: discriminator.adopt_weight(0.5, step, threshold=10))
  assert float(adopt(9)) == 0.0
  assert float(adopt(10)) == 0.5
  assert float(discriminator.adopt_weight(0.5, 3, threshold=2, value=0.1)) == 0.5
  assert float(discriminator.adopt_weight(0.5, 1, threshold=2, value=0.1)) == pytest.approx(0.1)
