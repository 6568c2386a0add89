"""Parity of the spatial layers with their diffusers PyTorch twins."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models import attention as d_attention
from diffusers.models import attention_processor as d_processor
from diffusers.models import embeddings as d_embeddings
from diffusers.models import resnet as d_resnet
from diffusers.models.transformers import transformer_2d as d_transformer

from videoldm.models import attention
from videoldm.models import layers
import diffusers_reference as ref

TOL = 1e-5


def _inputs(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run_flax(module, *args, torch_module, **kwargs):
  params = ref.flax_params_from_torch(torch_module, module, *args, **kwargs)
  return module.apply({'params': params}, *args, **kwargs)


@pytest.mark.parametrize('flip, shift, dim', [(True, 0.0, 32), (False, 1.0, 33)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
  t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
  ours = layers.timestep_embedding(jnp.asarray(t), dim, flip, shift)
  theirs = d_embeddings.get_timestep_embedding(torch.from_numpy(t), dim, flip, shift)
  # Angles reach ~1000 rad, where float32 spacing is ~6e-5.
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)


@pytest.mark.parametrize('in_ch, out_ch, with_temb, norm', [
    (16, 32, True, 'default'), (32, 32, True, 'default'), (16, 16, False, 'default'),
    (16, 32, True, 'scale_shift'), (32, 32, True, 'scale_shift')])
def test_resblock_matches_resnet_block_2d(in_ch, out_ch, with_temb, norm):
  torch_block = ref.randomize_(d_resnet.ResnetBlock2D(
      in_channels=in_ch, out_channels=out_ch, temb_channels=24 if with_temb else None,
      groups=8, eps=1e-6, output_scale_factor=2.0, time_embedding_norm=norm))
  x, temb = _inputs(2, 8, 8, in_ch), _inputs(2, 24, seed=1)
  temb_arg = temb if with_temb else None
  ours = _run_flax(layers.ResBlock(out_ch, groups=8, eps=1e-6, output_scale_factor=2.0,
                                   time_embedding_norm=norm),
                   x, temb_arg, torch_module=torch_block)
  with torch.no_grad():
    theirs = torch_block(ref.nchw(x), torch.from_numpy(temb) if with_temb else None)
  assert ref.relative_error(ours, ref.nhwc(theirs)) < TOL


def test_resblock_param_names_follow_diffusers():
  torch_block = d_resnet.ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=4,
                                       groups=4)
  shapes = jax.eval_shape(layers.ResBlock(16, groups=4).init, jax.random.key(0),
                          jnp.zeros((1, 4, 4, 8)), jnp.zeros((1, 4)))['params']
  assert sorted(shapes) == sorted({k.split('.')[0] for k in torch_block.state_dict()})


def test_resblock_rejects_unknown_time_embedding_norm():
  block = layers.ResBlock(8, groups=4, time_embedding_norm='film')
  with pytest.raises(ValueError, match="time_embedding_norm='film' is not one of"):
    block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)), jnp.zeros((1, 4)))
  block = layers.ResBlock(8, groups=4, time_embedding_norm='scale_shift')
  with pytest.raises(ValueError, match="'scale_shift' needs a time embedding; got temb=None"):
    block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


@pytest.mark.parametrize('padding, torch_padding', [('same', 1), ('asymmetric', 0)])
def test_downsample_matches_downsample_2d(padding, torch_padding):
  torch_down = ref.randomize_(d_resnet.Downsample2D(
      8, use_conv=True, out_channels=8, padding=torch_padding, name='op'))
  x = _inputs(1, 8, 8, 8)
  ours = _run_flax(layers.Downsample(8, padding=padding), x, torch_module=torch_down)
  with torch.no_grad():
    theirs = torch_down(ref.nchw(x))
  assert ours.shape == (1, 4, 4, 8)
  assert ref.relative_error(ours, ref.nhwc(theirs)) < TOL


def test_downsample_rejects_unknown_padding():
  with pytest.raises(ValueError, match="'reflect'"):
    layers.Downsample(4, padding='reflect').init(jax.random.key(0), jnp.zeros((1, 4, 4, 4)))


def test_upsample_matches_upsample_2d():
  torch_up = ref.randomize_(d_resnet.Upsample2D(8, use_conv=True, out_channels=16))
  x = _inputs(1, 4, 4, 8)
  ours = _run_flax(layers.Upsample(16), x, torch_module=torch_up)
  with torch.no_grad():
    theirs = torch_up(ref.nchw(x))
  assert ours.shape == (1, 8, 8, 16)
  assert ref.relative_error(ours, ref.nhwc(theirs)) < TOL


def test_attention_matches_diffusers_with_context_and_mask():
  torch_attn = ref.randomize_(d_processor.Attention(
      query_dim=32, cross_attention_dim=12, heads=4, dim_head=8, out_bias=True))
  x, context = _inputs(2, 6, 32), _inputs(2, 5, 12, seed=1)
  keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  ours = _run_flax(attention.Attention(4, 8), x, context, keep, torch_module=torch_attn)
  with torch.no_grad():
    theirs = torch_attn(torch.from_numpy(x), torch.from_numpy(context),
                        attention_mask=torch.from_numpy(np.where(keep, 0.0, -1e9)
                                                        .astype(np.float32))[:, None])
  assert ref.relative_error(ours, theirs.numpy()) < TOL


def test_attention_rejects_unknown_implementation():
  q = jnp.zeros((1, 2, 1, 4))
  with pytest.raises(ValueError, match="'flash'"):
    attention.dot_product_attention(q, q, q, implementation='flash')


@pytest.mark.parametrize('n, with_mask', [(300, False), (256, True)])
def test_blocked_attention_matches_one_call_values_and_gradients(n, with_mask):
  # 300 queries: 5 blocks of 64 (padded); 256 queries: 2 blocks of 128 sharing the key mask.
  q, k, v = (jnp.asarray(_inputs(8, n, 4, 8, seed=s)) for s in range(3))
  mask = jnp.asarray(np.random.default_rng(3).random((8, n)) > 0.3) if with_mask else None
  run = lambda impl: lambda q, k, v: attention.dot_product_attention(q, k, v, mask, impl)
  blocked, plain = run('blocked'), run('xla')
  np.testing.assert_allclose(blocked(q, k, v), plain(q, k, v), atol=1e-5)
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
  for ours, theirs in zip(jax.grad(loss(blocked), (0, 1, 2))(q, k, v),
                          jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_attention_on_cpu_blocks_long_query_sequences_only():
  q = jnp.zeros((8, 256, 8, 4))  # blocks of 64 queries
  blocked = str(jax.make_jaxpr(attention.dot_product_attention)(q, q, q))
  short = str(jax.make_jaxpr(attention.dot_product_attention)(q[:, :255], q, q))
  assert 'scan' in blocked and 'scan' not in short


@pytest.mark.parametrize('dtype, tried', [(jnp.bfloat16, ['cudnn', 'xla']),
                                           (jnp.float16, ['cudnn', 'xla']),
                                           (jnp.float32, ['xla'])])
def test_automatic_attention_on_gpu_tries_cudnn_for_half_precision_then_xla(
    monkeypatch, dtype, tried):
  calls, xla_attention = [], jax.nn.dot_product_attention

  def recording(*args, implementation=None, **kwargs):
    calls.append(implementation)
    return xla_attention(*args, implementation=implementation, **kwargs)

  q, k, v = (jnp.asarray(_inputs(2, 300, 4, 8, seed=s), dtype) for s in range(3))
  mask = jnp.asarray(np.random.default_rng(3).random((2, 300)) > 0.3)
  expected = xla_attention(q, k, v, mask=mask[:, None, None], implementation='xla')
  monkeypatch.setattr(jax.nn, 'dot_product_attention', recording)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  out = attention.dot_product_attention(q, k, v, mask)
  # cuDNN is not on this machine: it raises at trace time and XLA runs instead.
  assert calls == tried
  np.testing.assert_array_equal(out, expected)
  calls.clear()
  with pytest.raises(RuntimeError, match='cuDNN'):  # Asked for by name: no fallback.
    attention.dot_product_attention(q, k, v, mask, 'cudnn')


def test_blocked_attention_rejects_a_mask_that_varies_over_queries():
  q = jnp.zeros((1, 4, 1, 4))
  with pytest.raises(ValueError, match=r'\(1, 1, 4, 4\)'):
    attention.dot_product_attention(q, q, q, jnp.ones((1, 1, 4, 4), bool), 'blocked')


def test_feed_forward_matches_geglu_feed_forward():
  torch_ff = ref.randomize_(d_attention.FeedForward(16, mult=4, activation_fn='geglu'))
  x = _inputs(2, 5, 16)
  ours = _run_flax(attention.FeedForward(16), x, torch_module=torch_ff)
  with torch.no_grad():
    theirs = torch_ff(torch.from_numpy(x))
  assert ref.relative_error(ours, theirs.numpy()) < TOL


@pytest.mark.parametrize('cross', [True, False])
def test_basic_transformer_block_matches_diffusers(cross):
  torch_block = ref.randomize_(d_attention.BasicTransformerBlock(
      32, 4, 8, cross_attention_dim=12 if cross else None))
  x, context = _inputs(2, 6, 32), _inputs(2, 3, 12, seed=1)
  context_arg = context if cross else None
  ours = _run_flax(attention.BasicTransformerBlock(32, 4, 8, cross_attention=cross),
                   x, context_arg, torch_module=torch_block)
  with torch.no_grad():
    theirs = torch_block(torch.from_numpy(x), encoder_hidden_states=(
        torch.from_numpy(context) if cross else None))
  assert ref.relative_error(ours, theirs.numpy()) < TOL


@pytest.mark.parametrize('linear', [False, True])
def test_spatial_transformer_matches_transformer_2d(linear):
  torch_model = ref.randomize_(d_transformer.Transformer2DModel(
      num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=2,
      cross_attention_dim=12, norm_num_groups=8, use_linear_projection=linear))
  x, context = _inputs(2, 4, 4, 32), _inputs(2, 3, 12, seed=1)
  module = attention.SpatialTransformer(2, 16, depth=2, use_linear_projection=linear,
                                        norm_num_groups=8)
  ours = _run_flax(module, x, context, torch_module=torch_model)
  with torch.no_grad():
    theirs = torch_model(ref.nchw(x), encoder_hidden_states=torch.from_numpy(context)).sample
  assert ref.relative_error(ours, ref.nhwc(theirs)) < TOL


@pytest.mark.parametrize('frames, kernel, strides, use_bias, dtype', [
    (8, (3, 4, 4), (2, 2, 2), True, jnp.float32),  # The 3D discriminator's strided convs.
    (5, (3, 4, 4), (1, 1, 1), False, jnp.float32),
    (3, (3, 3, 3), (1, 2, 2), True, jnp.bfloat16),  # Taps accumulate as one conv's do.
    (5, (3, 1, 1), (1, 1, 1), True, jnp.float32),  # Temporal layers: one (3, 1) conv.
    (8, (3, 1, 1), (2, 1, 1), False, jnp.bfloat16)])
def test_frame_tap_conv_matches_nn_conv_values_and_gradients(frames, kernel, strides, use_bias,
                                                            dtype):
  pad = tuple((k // 2, k // 2) for k in kernel) if kernel[1] != 4 else ((1, 1),) * 3
  kwargs = dict(features=6, kernel_size=kernel, strides=strides, padding=pad,
                use_bias=use_bias, dtype=dtype)
  taps, conv = layers.FrameTapConv(**kwargs), nn.Conv(**kwargs)
  x = jax.random.normal(jax.random.key(0), (2, frames, 12, 12, 5))
  params = taps.init(jax.random.key(1), x)
  # Same names, shapes and initial values.
  jax.tree.map(np.testing.assert_array_equal, params, conv.init(jax.random.key(1), x))
  if use_bias:  # Non-zero bias so it is checked too.
    params = jax.tree.map(lambda p: p + 0.1, params)
  out_taps, out_conv = taps.apply(params, x), conv.apply(params, x)
  assert out_taps.dtype == out_conv.dtype == dtype
  rtol = 1e-5 if dtype == jnp.float32 else 2**-8  # bf16: both round one f32 sum (one ulp).
  np.testing.assert_allclose(np.float32(out_taps), np.float32(out_conv), rtol=rtol, atol=1e-5)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))
  grads_taps = jax.grad(loss(taps), argnums=(0, 1))(params, x)
  grads_conv = jax.grad(loss(conv), argnums=(0, 1))(params, x)
  rtol = 1e-4 if dtype == jnp.float32 else 2e-2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=rtol,
                                                       atol=rtol * np.max(np.abs(np.float32(b)))),
               grads_taps, grads_conv)
