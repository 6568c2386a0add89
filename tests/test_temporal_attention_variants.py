"""Temporal-attention variants: identity at init, references, frame dependencies, U-Net field."""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm.models import layers
from videoldm.models import temporal
from videoldm.models import video_unet

B, F, H, W, C = 2, 5, 4, 4, 8
HEADS, HEAD_DIM, GROUPS = 2, 4, 4
VARIANTS = temporal.ATTENTION_VARIANTS


def _module(variant):
  return temporal.TemporalTransformer(HEADS, HEAD_DIM, norm_groups=GROUPS,
                                      attention_variant=variant)


@functools.cache
def _apply(variant):
  return jax.jit(_module(variant).apply, static_argnums=2)


def _video(seed, b=B):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((b * F, H, W, C)), jnp.float32)  # (b f) h w c


def _randomize(params, seed=0, scale=0.3):
  """Every leaf (the zero-initialised `proj_out` included) random."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype), params)


@functools.cache
def _init_params(variant):
  return jax.jit(_module(variant).init, static_argnums=2)(
      jax.random.key(0), _video(0), F)['params']


@functools.cache
def _random_params():
  return _randomize(_init_params('temporal'))


def _allowed(variant):
  """Bool `(f h w, f h w)`: may query token i attend to key token j (token = frame, loc)."""
  frame = np.repeat(np.arange(F), H * W)[:, None], np.repeat(np.arange(F), H * W)[None]
  loc = np.tile(np.arange(H * W), F)[:, None], np.tile(np.arange(H * W), F)[None]
  fq, fk = frame
  return {'temporal': loc[0] == loc[1],
          'full': np.ones((F * H * W,) * 2, bool),
          'causal': fk <= fq,
          'sparse_causal': (fk == 0) | (fk == fq - 1) | (fk == fq)}[variant]


def _reference(params, x, allowed):
  """The layer in plain jnp: dense softmax attention over all f h w tokens under `allowed`."""
  b = x.shape[0] // F
  dense = lambda p, t: t @ p['kernel'] + p.get('bias', 0.0)

  def layer_norm(p, t):
    mean, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
    return (t - mean) / jnp.sqrt(var + 1e-5) * p['scale'] + p['bias']

  groups = x.reshape(x.shape[:3] + (GROUPS, C // GROUPS))  # ((b f), h, w, g, c / g)
  mean = groups.mean((1, 2, 4), keepdims=True)
  var = groups.var((1, 2, 4), keepdims=True)
  normed = ((groups - mean) / jnp.sqrt(var + 1e-6)).reshape(x.shape)
  hidden = dense(params['proj_in'], normed * params['norm']['scale'] + params['norm']['bias'])
  pos = params['time_pos_embed']
  frames = layers.timestep_embedding(jnp.arange(F), HEADS * HEAD_DIM)  # (f, inner)
  frames = dense(pos['linear_2'], jax.nn.silu(dense(pos['linear_1'], frames)))
  hidden = hidden.reshape(b, F, H * W, -1) + frames[None, :, None]  # (b, f, h w, inner)
  tokens = hidden.reshape(b, F * H * W, -1)  # (b, f h w, inner), token = frame * h w + loc
  block = params['transformer_blocks_0']
  attn = block['attn1']
  normed = layer_norm(block['norm1'], tokens)
  heads = lambda t: t.reshape(b, -1, HEADS, HEAD_DIM)
  q, k, v = (heads(dense(attn[name], normed)) for name in ('to_q', 'to_k', 'to_v'))
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(HEAD_DIM)
  weights = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(tokens.shape)
  tokens = tokens + dense(attn['to_out_0'], out)
  value, gate = jnp.split(dense(block['ff']['net_0']['proj'],
                                layer_norm(block['norm3'], tokens)), 2, axis=-1)
  tokens = tokens + dense(block['ff']['net_2'], value * jax.nn.gelu(gate, approximate=False))
  out = dense(params['proj_out'], tokens).reshape(b * F, H, W, C)
  return x + out


@pytest.mark.parametrize('variant', VARIANTS)
def test_identity_at_init(variant):
  x = _video(1)
  params = _init_params(variant)
  out = _apply(variant)({'params': params}, x, F)
  np.testing.assert_array_equal(out, x)
  blended = temporal.AlphaBlender('learned', 0.5).apply({'params': {'mix_factor': jnp.zeros(1)}},
                                                        x, out)
  np.testing.assert_array_equal(blended, x)


def test_same_parameter_tree_for_every_variant():
  init = lambda variant: lambda x: _module(variant).init(jax.random.key(0), x, F)
  shapes = {variant: jax.eval_shape(init(variant), _video(0)) for variant in VARIANTS}
  flat = {variant: {path: leaf.shape for path, leaf in
                    flax.traverse_util.flatten_dict(tree['params'], sep='/').items()}
          for variant, tree in shapes.items()}
  for variant in VARIANTS:
    assert flat[variant] == flat['temporal'], variant


@pytest.mark.parametrize('variant', VARIANTS)
def test_matches_dense_reference(variant):
  """'full': softmax over all f h w tokens; 'temporal': over the f tokens of one location."""
  x = _video(2)
  params = _random_params()
  out = _apply(variant)({'params': params}, x, F)
  expected = _reference(params, x, _allowed(variant))
  assert float(jnp.max(jnp.abs(out - x))) > 0.1  # The residual branch is not zero.
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_reference_masks_differ():
  """The references distinguish the variants (so each match above is specific)."""
  x, params = _video(2), _random_params()
  outs = [_reference(params, x, _allowed(v)) for v in VARIANTS]
  for i in range(len(outs)):
    for j in range(i):
      assert float(jnp.max(jnp.abs(outs[i] - outs[j]))) > 1e-3, (VARIANTS[i], VARIANTS[j])


def _dependencies(variant):
  """Bool `(f, f)`: does the output at frame k (row) change when input frame j (column) does."""
  base = _video(3, b=1)  # (f, h, w, c): one video
  rng = np.random.default_rng(4)
  videos = [base]
  for j in range(F):
    videos.append(base.at[j].add(jnp.asarray(rng.standard_normal((H, W, C)), jnp.float32)))
  x = jnp.concatenate(videos)  # ((1 + f) f) h w c: the video, then one per changed frame
  out = _apply(variant)({'params': _random_params()}, x, F).reshape(1 + F, F, H, W, C)
  diff = jnp.max(jnp.abs(out[1:] - out[:1]), axis=(2, 3, 4))  # (changed j, output k)
  changed = np.asarray(diff > 1e-4)
  assert np.all(np.asarray(diff)[~changed] < 1e-6), diff  # Unchanged means unchanged.
  return changed.T


def test_causal_frame_k_sees_frames_up_to_k():
  changed = _dependencies('causal')
  expected = np.tril(np.ones((F, F), bool))  # Frame k depends on j exactly when j <= k.
  np.testing.assert_array_equal(changed, expected)


def test_sparse_causal_frame_k_sees_first_previous_and_own_frame():
  changed = _dependencies('sparse_causal')
  for k in range(F):
    expected = {0, max(k - 1, 0), k}
    assert set(np.flatnonzero(changed[k])) == expected, (k, changed[k])


@pytest.mark.parametrize('variant', ['temporal', 'full'])
def test_bidirectional_variants_see_every_frame(variant):
  assert _dependencies(variant).all()


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match=r"'bidirectional' is not one of \('temporal', 'full'"):
    _module('bidirectional').init(jax.random.key(0), _video(0), F)
  config = video_unet.video_unet_config('tiny')
  config.temporal.attention = 'bidirectional'
  with pytest.raises(ValueError, match=r"temporal.attention='bidirectional' is not one of"):
    video_unet.validate_video_config(config)


def test_old_configs_read_the_default_variant():
  assert video_unet.video_unet_config('tiny').temporal.attention == 'temporal'
  saved = {'model': {'unet': {'temporal': {'layers': ['attention']}},
                     'upsampler_unet': {'temporal': {'layers': ['conv3d']}}}}
  upgraded = checkpoints.upgrade_config(saved)
  assert upgraded.model.unet.temporal.attention == 'temporal'
  assert upgraded.model.upsampler_unet.temporal.attention == 'temporal'


UNET_FRAMES, UNET_SIZE = 3, 8


def _unet_config(variant):
  config = video_unet.video_unet_config('tiny')
  # Attention only: 3D convs and the clip-wide GroupNorm of TemporalResBlock would mix frames.
  config.temporal.update(layers=('attention',), attention_everywhere=True, attention=variant)
  return config


def test_unet_variants_share_params_and_causal_ignores_later_frames():
  inputs = video_unet.example_inputs(_unet_config('temporal'), 1, UNET_FRAMES, UNET_SIZE)
  trees = {}
  for variant in VARIANTS:
    shapes = jax.eval_shape(video_unet.VideoUNet(_unet_config(variant)).init,
                            jax.random.key(0), **inputs)['params']
    trees[variant] = {p: s.shape for p, s in
                      flax.traverse_util.flatten_dict(shapes, sep='/').items()}
    assert trees[variant] == trees['temporal'], variant
  assert any('temporal_transformers' in path for path in trees['temporal'])

  # Random values for every leaf (the shapes suffice; a jitted init takes a minute to compile).
  rng = np.random.default_rng(0)
  params = flax.traverse_util.unflatten_dict(
      {p: jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)
       for p, shape in trees['causal'].items()}, sep='/')
  x = jnp.asarray(rng.standard_normal(inputs['x'].shape), jnp.float32)
  later = x.at[:, 1:].add(1.0)  # Every frame after the first changes.
  both = jnp.concatenate([x, later])  # (2, f, h, w, c)
  timesteps = jnp.full((2,), 10.0)
  text = jnp.broadcast_to(jnp.asarray(rng.standard_normal((1, 1, 16)), jnp.float32), (2, 1, 16))
  outs = {}
  for variant in ('causal', 'full'):
    model = video_unet.VideoUNet(_unet_config(variant))
    outs[variant] = jax.jit(model.apply)({'params': params}, both, timesteps, text)
  causal_out, full_out = outs['causal'], outs['full']
  assert np.isfinite(causal_out).all() and np.isfinite(full_out).all()
  change = lambda out, frames: float(jnp.max(jnp.abs(out[0, frames] - out[1, frames])))
  assert change(causal_out, 0) < 1e-6
  assert change(causal_out, slice(1, None)) > 1e-2
  # The same params with 'full' attention: frame 0 now sees the later frames.
  assert change(full_out, 0) > 1e-4
