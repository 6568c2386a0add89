"""Temporal layers: identity at init, frame mixing, equivariance, blending, errors."""

import functools
import re

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import attention
from videoldm.models import params as params_lib
from videoldm.models import temporal

B, F, H, W, C = 2, 3, 8, 8, 32
CONTEXT_DIM = 12
TRAINABLE = re.compile(params_lib.TEMPORAL_PATTERN)


def _frames(key, b=B, f=F, channels=C):
  return jax.random.normal(key, (b * f, H, W, channels))  # (b f) h w c


def _randomize(params, seed, scale=0.3):
  """Replaces every leaf (zero-initialised ones included) by random values."""
  rng = np.random.default_rng(seed)  # NumPy here: no per-shape XLA compiles.
  return jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype), params)


def _init(module, x, num_frames, *args, seed=0):
  """Jitted init: one whole-graph compile beats eager op-by-op compiles."""
  init = jax.jit(module.init, static_argnums=2)
  return init(jax.random.key(seed), x, num_frames, *args)['params']


@functools.cache
def _jitted_apply(module):
  return jax.jit(module.apply, static_argnums=2)


def _apply(module, params, x, num_frames, *args):
  return _jitted_apply(module)({'params': params}, x, num_frames, *args)


@pytest.fixture(scope='module')
def frames():
  return _frames(jax.random.key(0))


@pytest.fixture(scope='module')
def text():
  return jax.random.normal(jax.random.key(1), (B, 5, CONTEXT_DIM))


@pytest.fixture(scope='module')
def transformer(frames, text):
  module = temporal.TemporalTransformer(num_heads=2, head_dim=16, context_dim=CONTEXT_DIM)
  params = _init(module, frames, F, text, seed=2)
  return module, params, _randomize(params, 3)


@pytest.fixture(scope='module')
def resblock(frames):
  module = temporal.TemporalResBlock(C, groups=8)
  temb = jax.random.normal(jax.random.key(4), (B, 16))
  params = _init(module, frames, F, temb, seed=5)
  return module, params, _randomize(params, 6), temb


def test_fresh_temporal_transformer_is_identity(transformer, frames, text):
  module, params, _ = transformer
  out = _apply(module, params, frames, F, text)
  np.testing.assert_array_equal(out, frames)
  assert out.dtype == frames.dtype


@pytest.mark.parametrize('kernel_size, with_temb', [((3, 3, 3), True), ((3, 1, 1), False)])
def test_fresh_temporal_resblock_is_identity(frames, kernel_size, with_temb):
  module = temporal.TemporalResBlock(C, kernel_size=kernel_size, groups=8)
  temb = jnp.ones((B * F, 16)) if with_temb else None  # Per frame; None = decoder.
  params = _init(module, frames, F, temb, seed=7)
  np.testing.assert_array_equal(_apply(module, params, frames, F, temb), frames)
  assert ('time_emb_proj' in params) == with_temb


def test_fresh_layer_blended_gives_spatial_output(transformer, frames, text):
  module, params, _ = transformer
  z_temporal = _apply(module, params, frames, F, text)
  blender = temporal.AlphaBlender('learned', alpha=0.3)
  variables = blender.init(jax.random.key(0), frames, z_temporal)
  np.testing.assert_allclose(blender.apply(variables, frames, z_temporal), frames,
                             rtol=1e-6, atol=1e-6)


def test_alpha_blender_fixed_one_returns_spatial(frames):
  other = frames + 5.0
  blender = temporal.AlphaBlender('fixed', alpha=1.0)
  variables = blender.init(jax.random.key(0), frames, other)
  assert not variables  # A fixed alpha has no parameters.
  np.testing.assert_array_equal(blender.apply(variables, frames, other), frames)


def test_alpha_blender_images_force_spatial(frames):
  other = frames + 5.0
  blender = temporal.AlphaBlender('learned_with_images', alpha=0.3)
  variables = blender.init(jax.random.key(0), frames, other)
  all_images = jnp.ones((B, F), bool)
  np.testing.assert_array_equal(blender.apply(variables, frames, other, all_images, F), frames)
  # Only video 1, frame 2 is an image: alpha = 1 there, 0.3 elsewhere.
  indicator = jnp.zeros((B, F), bool).at[1, 2].set(True)
  ones, zeros = jnp.ones((B * F, 1, 1, 1)), jnp.zeros((B * F, 1, 1, 1))
  alphas = blender.apply(variables, ones, zeros, indicator).reshape(B, F)
  expected = np.full((B, F), 0.3, np.float32)
  expected[1, 2] = 1.0
  np.testing.assert_allclose(alphas, expected, rtol=1e-6)


def test_alpha_blender_learned_alpha_is_sigmoid_of_mix_factor():
  blender = temporal.AlphaBlender('learned', alpha=0.3)
  ones, zeros = jnp.ones((4, 2, 2, 1)), jnp.zeros((4, 2, 2, 1))
  params = blender.init(jax.random.key(0), ones, zeros)['params']
  np.testing.assert_allclose(params['mix_factor'], [np.log(0.3 / 0.7)], rtol=1e-6)
  np.testing.assert_allclose(blender.apply({'params': params}, ones, zeros), 0.3, rtol=1e-6)
  moved = {'mix_factor': jnp.array([2.0])}
  np.testing.assert_allclose(blender.apply({'params': moved}, ones, zeros),
                             1 / (1 + np.exp(-2.0)), rtol=1e-6)


@pytest.mark.parametrize('strategy, alpha, match', [
    ('average', 0.5, "'average'"),
    ('learned', 1.0, 'alpha=1.0'),
    ('fixed', 1.5, 'alpha=1.5'),
])
def test_alpha_blender_rejects_bad_config(frames, strategy, alpha, match):
  with pytest.raises(ValueError, match=match):
    temporal.AlphaBlender(strategy, alpha=alpha).init(jax.random.key(0), frames, frames)


def _perturb_first_frame(frames):
  noise = jax.random.normal(jax.random.key(19), frames.shape[1:])
  return frames.at[0].add(noise)  # Video 0, frame 0 (a constant shift would be normed away).


def test_temporal_transformer_mixes_frames_within_a_video(transformer, frames, text):
  module, _, params = transformer
  apply = lambda x: _apply(module, params, x, F, text)
  delta = jnp.abs(apply(_perturb_first_frame(frames)) - apply(frames)).max(axis=(1, 2, 3))
  assert delta[2] > 1e-3  # Video 0, frame 2 sees frame 0.
  np.testing.assert_array_equal(delta[F:], 0.0)  # Video 1 is untouched.


def test_temporal_resblock_mixes_frames_within_a_video(resblock, frames):
  module, _, params, temb = resblock
  apply = lambda x: _apply(module, params, x, F, temb)
  delta = jnp.abs(apply(_perturb_first_frame(frames)) - apply(frames)).max(axis=(1, 2, 3))
  assert delta[2] > 1e-3
  np.testing.assert_array_equal(delta[F:], 0.0)


@pytest.mark.parametrize('use_frame_pos_embed', [False, True])
def test_frame_permutation_equivariance_only_without_position(frames, use_frame_pos_embed):
  module = temporal.TemporalTransformer(2, 16, use_frame_pos_embed=use_frame_pos_embed)
  params = _randomize(_init(module, frames, F, seed=8), 9)
  order = np.array([2, 0, 1])
  permute = lambda x: x.reshape(B, F, H, W, C)[:, order].reshape(B * F, H, W, C)
  out_of_permuted = _apply(module, params, permute(frames), F)
  permuted_out = permute(_apply(module, params, frames, F))
  if use_frame_pos_embed:
    assert jnp.abs(out_of_permuted - permuted_out).max() > 1e-3
  else:
    np.testing.assert_allclose(out_of_permuted, permuted_out, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def narrow_layers():
  """16-channel layers with random weights; parameter shapes do not depend on f."""
  x = _frames(jax.random.key(10), b=1, f=2, channels=16)
  layer_args = [(temporal.TemporalTransformer(2, 8, norm_groups=8), ()),
                (temporal.TemporalResBlock(16, groups=8), (jnp.ones((1, 8)),))]
  return [(module, _randomize(_init(module, x, 2, *extra, seed=11), 12), extra)
          for module, extra in layer_args]


@pytest.mark.parametrize('num_frames', [1, 2, 5])
def test_shapes_and_dtypes_for_any_frame_count(narrow_layers, num_frames):
  x = _frames(jax.random.key(10), b=1, f=num_frames, channels=16)
  for module, params, extra in narrow_layers:
    out = _apply(module, params, x, num_frames, *extra)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_resblock_per_frame_temb_equals_per_video_temb(resblock, frames):
  module, _, params, temb = resblock
  per_frame = jnp.repeat(temb, F, axis=0)  # (b f) d
  np.testing.assert_allclose(_apply(module, params, frames, F, per_frame),
                             _apply(module, params, frames, F, temb),
                             rtol=1e-6, atol=1e-6)


def test_transformer_per_frame_text_equals_per_video_text(transformer, frames, text):
  module, _, params = transformer
  per_frame = jnp.repeat(text, F, axis=0)  # ((b f), m, d)
  np.testing.assert_allclose(_apply(module, params, frames, F, per_frame),
                             _apply(module, params, frames, F, text),
                             rtol=1e-6, atol=1e-6)


def test_block_matches_reference_with_context_broadcast_to_every_location(text):
  """The shared `attention.BasicTransformerBlock` on the temporal `(b, h*w, f, c)` layout."""
  block = attention.BasicTransformerBlock(16, 2, 8, cross_attention=True)
  x = jax.random.normal(jax.random.key(20), (B, 4, F, 16))  # (b, h*w, f, c)
  params = _randomize(jax.jit(block.init)(jax.random.key(21), x, text)['params'], 22)

  def reference(x):
    """Per location: attention over frames, then cross-attention to its own copy of text."""
    layer_norm = lambda name, v: nn.LayerNorm(use_fast_variance=False).apply(
        {'params': params[name]}, v)
    attend = lambda name, *v: attention.Attention(2, 8).apply({'params': params[name]}, *v)
    hidden = x.reshape(B * 4, F, 16)  # ((b n), f, c)
    hidden = hidden + attend('attn1', layer_norm('norm1', hidden))
    text_per_location = jnp.repeat(text, 4, axis=0)  # ((b n), m, d)
    hidden = hidden + attend('attn2', layer_norm('norm2', hidden), text_per_location)
    feed_forward = attention.FeedForward(16).apply({'params': params['ff']},
                                                   layer_norm('norm3', hidden))
    return (hidden + feed_forward).reshape(B, 4, F, 16)

  np.testing.assert_allclose(jax.jit(block.apply)({'params': params}, x, text),
                             jax.jit(reference)(x), rtol=1e-5, atol=1e-5)


def test_frame_count_not_dividing_batch_raises(transformer, resblock, frames, text):
  module, params, _ = transformer
  with pytest.raises(ValueError, match=r'6 frames.*num_frames=4'):
    _apply(module, params, frames, 4, text)
  block, block_params, _, temb = resblock
  with pytest.raises(ValueError, match=r'6 frames.*num_frames=4'):
    _apply(block, block_params, frames, 4, temb)


def test_channel_mismatches_raise(transformer, frames):
  with pytest.raises(ValueError, match=r'32 channels.*out_channels=16'):
    _init(temporal.TemporalResBlock(16, groups=8), frames, F)
  module, params, _ = transformer
  with pytest.raises(ValueError, match=r'\(2, 5, 10\).*context_dim=12'):
    _apply(module, params, frames, F, jnp.ones((B, 5, 10)))
  with pytest.raises(ValueError, match=r'32 channels.*24 GroupNorm groups'):
    _init(temporal.TemporalTransformer(2, 8, norm_groups=24), frames, F)


def test_frame_position_embedding_and_regime():
  module = temporal.FramePositionEmbedding(16, use_regime=True)
  regime = jnp.array([0.0, 1.0])
  params = jax.jit(module.init, static_argnums=(1, 2))(jax.random.key(0), 4, 2, regime)
  apply = jax.jit(module.apply, static_argnums=(1, 2))
  fresh = apply(params, 4, 2, regime)
  assert fresh.shape == (2, 4, 16)
  np.testing.assert_array_equal(fresh[0], fresh[1])  # Zero `regime_proj`: regime ignored.
  assert jnp.abs(fresh[0, 0] - fresh[0, 1]).max() > 1e-4  # Frames differ.
  trained = apply(_randomize(params, 1), 4, 2, regime)
  assert jnp.abs(trained[0] - trained[1]).max() > 1e-4
  with pytest.raises(ValueError, match='use_regime=True'):
    module.apply(params, 4, 2)


def _apply_injected(module, params, x, extra, injection):
  """`module(x, F, extra, ..., injection=injection)` (extra: text or temb)."""
  return jax.jit(lambda p, x, e, i: module.apply({'params': p}, x, F, e, injection=i))(
      params, x, extra, injection)


@pytest.mark.parametrize('layer', ['transformer', 'resblock'])
def test_injection_enters_the_residual_branch_only(layer, frames, text, request):
  """layer(z, injection=i) == layer(z + i) - i: the skip carries z alone."""
  module, params, trained, *temb = request.getfixturevalue(layer)
  extra = temb[0] if temb else text
  injection = jax.random.normal(jax.random.key(30), frames.shape)
  np.testing.assert_array_equal(_apply_injected(module, params, frames, extra, injection),
                                frames)  # Zero output projection: the context is ignored.
  injected = _apply_injected(module, trained, frames, extra, injection)
  reference = _apply(module, trained, frames + injection, F, extra) - injection
  np.testing.assert_allclose(injected, reference, rtol=1e-5, atol=1e-5)
  assert jnp.abs(injected - _apply(module, trained, frames, F, extra)).max() > 1e-2
  with pytest.raises(ValueError, match=r'injection has shape \(6, 8, 8, 16\); expected the '
                     r'input shape \(6, 8, 8, 32\)'):
    _apply_injected(module, params, frames, extra, injection[..., :16])


class _VideoBlock(nn.Module):
  """How a U-Net level wires a temporal layer, its blender and context."""

  @nn.compact
  def __call__(self, z, num_frames, context_features):
    injection = temporal.ContextInjection(C, name='context_proj_0')(context_features)
    z_temporal = temporal.TemporalTransformer(
        2, 16, name='temporal_transformers_0')(z, num_frames, injection=injection)
    return temporal.AlphaBlender(name='time_mixer_transformers_0')(z, z_temporal)


@pytest.fixture(scope='module')
def context_model():
  latents = jax.random.normal(jax.random.key(13), (B, F, 16, 16, 4))
  mask = jnp.zeros((B, F))
  encoder = temporal.ContextEncoder((8, 16))
  encoder_params = jax.jit(encoder.init)(jax.random.key(14), temporal.masked_context(latents, mask))
  block = _VideoBlock()
  frames = _frames(jax.random.key(15))
  features = jax.jit(encoder.apply)(encoder_params, temporal.masked_context(latents, mask))
  block_params = _init(block, frames, F, features[1], seed=16)
  return encoder, encoder_params, block, block_params, frames, latents


def test_context_encoder_levels_and_fresh_injection(context_model):
  encoder, encoder_params, block, block_params, frames, latents = context_model
  features = jax.jit(encoder.apply)(encoder_params,
                                    temporal.masked_context(latents, jnp.ones((B, F))))
  assert [f.shape for f in features] == [(B * F, 16, 16, 8), (B * F, 8, 8, 16)]
  np.testing.assert_allclose(_apply(block, block_params, frames, F, features[1]), frames,
                             rtol=1e-6, atol=1e-6)  # A fresh block is the image model.
  paths = ['/'.join(p) for p in flax.traverse_util.flatten_dict(block_params)]
  assert all(TRAINABLE.search(path) for path in paths)


def test_fresh_output_projection_learns_from_the_context_at_once(context_model):
  """The context path is first order: the zero-init `proj_out` gradient sees it."""
  encoder, encoder_params, block, block_params, frames, latents = context_model
  first_frame = jnp.zeros((B, F)).at[:, 0].set(1.0)
  target = jax.random.normal(jax.random.key(31), frames.shape)

  @jax.jit
  def proj_out_grad(latents):
    features = encoder.apply(encoder_params, temporal.masked_context(latents, first_frame))
    loss = lambda p: jnp.sum(block.apply({'params': p}, frames, F, features[1]) * target)
    return jax.grad(loss)(block_params)['temporal_transformers_0']['proj_out']['kernel']

  assert jnp.abs(proj_out_grad(latents) - proj_out_grad(latents * 3.0 + 1.0)).max() > 1e-3


def test_zero_mask_hides_latents_through_injection(context_model):
  encoder, encoder_params, block, block_params, frames, latents = context_model
  encoder_params = _randomize(encoder_params, 17)
  block_params = _randomize(block_params, 18)

  @jax.jit
  def run(latents, mask):
    features = encoder.apply(encoder_params, temporal.masked_context(latents, mask))
    return block.apply({'params': block_params}, frames, F, features[1])

  other = latents * 3.0 + 1.0
  no_context = jnp.zeros((B, F))
  np.testing.assert_array_equal(run(latents, no_context), run(other, no_context))
  first_frame = no_context.at[:, 0].set(1.0)
  assert jnp.abs(run(latents, first_frame) - run(other, first_frame)).max() > 1e-3
  assert jnp.abs(run(latents, first_frame) - run(latents, no_context)).max() > 1e-3


def test_resblock_rejects_inconsistent_temb_and_bad_frame_counts(resblock, frames):
  module, params, _, temb = resblock
  with pytest.raises(ValueError, match='initialised with a timestep embedding'):
    _apply(module, params, frames, F)
  with pytest.raises(ValueError, match=r'temb batch 4 matches neither 2 videos nor 6 frames'):
    _apply(module, params, frames, F, jnp.ones((4, 16)))
  with pytest.raises(ValueError, match='num_frames=0'):
    _apply(module, params, frames, 0, temb)
