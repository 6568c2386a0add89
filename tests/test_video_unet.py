"""Video U-Net: image-model identity, param loading, frame mixing, context, errors."""

import functools
import re

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import params as params_lib
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet

B, F, S = 2, 3, 16
# Every temporal option on at once; the other variants' param trees are subsets.
FULL = dict(layers=('conv3d', 'attention'), text_context=True, context_frames=True,
            regime_conditioning=True, attention_everywhere=True)
VARIANTS = {
    'full': FULL,
    'conv3d': dict(layers=('conv3d',)),
    'attention': dict(layers=('attention',), frame_pos_embed=False, attention_everywhere=True),
    'fixed_alpha_one': dict(FULL, merge_strategy='fixed', alpha=1.0),
}


def _config(variant='full', dtype='float32'):
  config = video_unet.video_unet_config('tiny')
  config.num_class_embeds = 3
  config.dtype = dtype
  config.temporal.update(VARIANTS[variant])
  return config


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _subset(params, shapes):
  """The leaves of `params` at the paths of `shapes` (which must all exist, same shape)."""
  flat = _flat(params)
  picked = {path: flat[path] for path in _flat(shapes)}
  assert all(picked[p].shape == s.shape for p, s in _flat(shapes).items())
  return flax.traverse_util.unflatten_dict(picked, sep='/')


def _randomize_temporal(params, seed=0, scale=0.3):
  """Random (non-zero) values for every temporal leaf; spatial leaves unchanged."""
  rng = np.random.default_rng(seed)  # NumPy: no per-shape XLA compiles.
  flat = {path: jnp.asarray(scale * rng.standard_normal(v.shape), jnp.float32)
          if params_lib.is_temporal(path) else v for path, v in _flat(params).items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


@functools.cache
def _model(variant):
  return video_unet.VideoUNet(_config(variant))


@functools.cache
def _apply(variant):
  model = _model(variant)
  return jax.jit(lambda params, inputs: model.apply({'params': params}, **inputs))


def _inputs(variant, x):
  """Video inputs with every conditioning the variant takes."""
  config = _config(variant)
  rng = np.random.default_rng(1)
  inputs = dict(x=x, timesteps=jnp.array([3.0, 742.0]), class_labels=jnp.array([0, 1]),
                context=jnp.asarray(rng.standard_normal((B, 5, 16)), jnp.float32))
  if config.temporal.context_frames:
    inputs['context_latents'] = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    inputs['context_mask'] = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])[:, :x.shape[1]]
  if config.temporal.regime_conditioning:
    inputs['regime'] = jnp.array([0.0, 1.0])
  return inputs


@pytest.fixture(scope='module')
def video():
  return jax.random.normal(jax.random.key(0), (B, F, S, S, 4))


@pytest.fixture(scope='module')
def fresh():
  """Real init of the full model (one compile); other variants take subsets of it."""
  config = _config('full')
  inputs = video_unet.example_inputs(config, batch_size=1, num_frames=2, size=8)
  init = jax.jit(lambda key: _model('full').init(key, **inputs)['params'])
  params = init(jax.random.key(0, impl='rbg'))  # Compiles faster than threefry.
  # Strong types (AlphaBlender's mix_factor is created weakly typed), so every
  # params tree below shares one compiled apply per variant.
  return jax.tree.map(lambda leaf: jnp.asarray(leaf, leaf.dtype), params)


@pytest.fixture(scope='module')
def image_outputs(fresh, video):
  """The image U-Net applied frame by frame to `video` (spatial params of `fresh`)."""
  config = _config('full')
  model = unet_lib.UNet(config)
  shapes = jax.eval_shape(lambda k: model.init(k, **unet_lib.example_inputs(config)),
                          jax.random.key(0))['params']
  params = _subset(fresh, shapes)
  inputs = _inputs('full', video)
  frames = video.reshape((B * F, S, S, 4))  # (b f) h w c
  per_frame = lambda a: jnp.repeat(a, F, axis=0)
  out = jax.jit(model.apply)({'params': params}, frames, per_frame(inputs['timesteps']),
                              per_frame(inputs['context']), per_frame(inputs['class_labels']))
  return dict(params=params, shapes=shapes, out=np.asarray(out).reshape(video.shape))


def _variant_params(variant, params):
  shapes = params_lib.param_shapes(_config(variant))
  return _subset(params, shapes)


@pytest.mark.parametrize('variant', ['full', 'conv3d', 'attention'])
def test_fresh_video_unet_equals_image_unet_frame_by_frame(variant, fresh, video,
                                                           image_outputs):
  params = _variant_params(variant, fresh)
  out = _apply(variant)(params, _inputs(variant, video))
  assert np.abs(np.asarray(out) - image_outputs['out']).max() < 1e-5


def test_image_frames_skip_random_temporal_layers(fresh, video, image_outputs):
  params = _randomize_temporal(fresh)
  indicator = jnp.array([[True, False, True], [True, True, True]])
  inputs = dict(_inputs('full', video), image_only_indicator=indicator)
  out = np.asarray(_apply('full')(params, inputs))
  # Frames marked as images are exactly the image model's, whatever their neighbours do.
  image = np.asarray(indicator)
  assert np.abs(out[image] - image_outputs['out'][image]).max() < 1e-5
  assert np.abs(out[~image] - image_outputs['out'][~image]).max() > 1e-2


def test_fixed_alpha_one_ignores_random_temporal_layers(fresh, video, image_outputs):
  params = _variant_params('fixed_alpha_one', _randomize_temporal(fresh))
  out = _apply('fixed_alpha_one')(params, _inputs('fixed_alpha_one', video))
  assert np.abs(np.asarray(out) - image_outputs['out']).max() < 1e-5


@pytest.mark.parametrize('variant', ['full', 'attention'])
def test_image_params_load_unchanged_and_regex_selects_exactly_the_new_params(
    variant, image_outputs):
  video_shapes = _flat(params_lib.param_shapes(_config(variant)))
  image_paths = set(_flat(image_outputs['shapes']))
  trainable = {p for p in video_shapes if re.search(params_lib.TEMPORAL_PATTERN, p)}
  assert set(video_shapes) - image_paths == trainable
  assert image_paths <= set(video_shapes)
  zeros = flax.traverse_util.unflatten_dict(
      {p: np.zeros(s.shape, s.dtype) for p, s in video_shapes.items()}, sep='/')
  loaded = _flat(params_lib.load_image_params(zeros, image_outputs['params']))
  for path, value in _flat(image_outputs['params']).items():
    assert loaded[path].dtype == value.dtype and np.array_equal(loaded[path], value), path
  assert all(not np.any(loaded[p]) for p in trainable)


def test_load_image_params_rejects_mismatched_names(fresh, image_outputs):
  image = _flat(image_outputs['params'])
  extra = flax.traverse_util.unflatten_dict(dict(image, **{'mid_block/resnets_9/w': 0}), sep='/')
  with pytest.raises(ValueError, match=r"unexpected \['mid_block/resnets_9/w'\]"):
    params_lib.load_image_params(fresh, extra)
  missing = flax.traverse_util.unflatten_dict(
      {p: v for p, v in image.items() if p != 'conv_out/bias'}, sep='/')
  with pytest.raises(ValueError, match=r"missing spatial \['conv_out/bias'\]"):
    params_lib.load_image_params(fresh, missing)


@pytest.mark.parametrize('variant', ['full', 'conv3d', 'attention'])
def test_random_temporal_layers_mix_frames(variant, fresh, video):
  params = _variant_params(variant, _randomize_temporal(fresh))
  perturbed = video.at[:, 0].add(1.0)
  out = _apply(variant)(params, _inputs(variant, video))
  out_perturbed = _apply(variant)(params, _inputs(variant, perturbed))
  assert np.abs(np.asarray(out_perturbed - out)[:, 2]).max() > 1e-3


def test_attention_only_without_frame_position_is_frame_equivariant(fresh, video):
  params = _variant_params('attention', _randomize_temporal(fresh))
  permutation = np.array([2, 0, 1])
  out = _apply('attention')(params, _inputs('attention', video))
  out_permuted = _apply('attention')(params, _inputs('attention', video[:, permutation]))
  np.testing.assert_allclose(out_permuted, np.asarray(out)[:, permutation], atol=1e-5)


def test_context_latents_matter_only_through_the_mask(fresh, video):
  params = _randomize_temporal(fresh)
  inputs = _inputs('full', video)
  other = dict(inputs, context_latents=inputs['context_latents'] + 5.0)
  no_mask = dict(context_mask=jnp.zeros((B, F)))
  apply = lambda extra: np.asarray(_apply('full')(params, extra))
  np.testing.assert_array_equal(apply(dict(inputs, **no_mask)), apply(dict(other, **no_mask)))
  assert np.abs(apply(inputs) - apply(other)).max() > 1e-3


@pytest.mark.parametrize('frames', [1, 2, 5])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_any_frame_count_and_larger_latents_give_video_shapes(fresh, frames, dtype):
  model = video_unet.VideoUNet(_config('full', dtype))
  x = jnp.zeros((B, frames, 24, 32, 4))  # Larger than the 16x16 used elsewhere.
  inputs = dict(_inputs('full', x), image_only_indicator=jnp.zeros((B, frames), bool),
                context_mask=jnp.ones((B, frames)))
  out = jax.eval_shape(lambda p: model.apply({'params': p}, **inputs), fresh)
  assert out.shape == (B, frames, 24, 32, 4) and out.dtype == jnp.dtype(dtype)


def test_single_frame_fresh_model_is_the_image_model(fresh, video, image_outputs):
  out = _apply('full')(fresh, _inputs('full', video[:, :1]))
  assert np.abs(np.asarray(out) - image_outputs['out'][:, :1]).max() < 1e-5


@pytest.mark.parametrize('change, message', [
    (dict(x=jnp.zeros((B, F, S, S, 3))), r'3 channels; expected in_channels=4'),
    (dict(x=jnp.zeros((B * F, S, S, 4))), r'expected \(b, f, h, w, 4\)'),
    (dict(image_only_indicator=jnp.zeros((B, 4), bool)), r'\(2, 4\); expected \(2, 3\)'),
    (dict(context_mask=jnp.zeros((B, 2))), r'\(2, 2\); expected \(2, 3\)'),
    (dict(context_latents=jnp.zeros((B, 4, S, S, 4))),
     r'\(2, 4, 16, 16, 4\); expected \(2, 3, 16, 16, 4\)'),
    (dict(context_latents=jnp.zeros((B, F, S, S, 5))), r'16, 5\); expected .*out_channels=4'),
    (dict(context=jnp.zeros((3, 5, 16))), r'context has shape \(3, 5, 16\); expected \(b=2'),
    (dict(regime=None), r'regime has shape None; expected \(2,\)'),
    (dict(timesteps=jnp.zeros((6,))), r'timesteps have shape \(6,\); expected \(\) or \(2,\)'),
])
def test_bad_inputs_raise_value_error(fresh, video, change, message):
  model = _model('full')
  inputs = dict(_inputs('full', video), **change)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda p: model.apply({'params': p}, **inputs), fresh)


@pytest.mark.parametrize('change, message', [
    (dict(layers=('conv2d',)), r"temporal.layers=\('conv2d',\) must be"),
    (dict(layers=('conv3d',), regime_conditioning=True), 'regime_conditioning=True'),
    (dict(merge_strategy='sum'), "merge_strategy='sum'"),
    (dict(num_heads=2, head_dim=16), 'at most one of'),
    (dict(num_heads=3), '32 channels cannot be split into 3 heads'),
])
def test_bad_config_raises_value_error(change, message):
  config = _config('attention')
  config.temporal.update(change)
  with pytest.raises(ValueError, match=message):
    video_unet.validate_video_config(config)
  no_text = _config('attention')
  no_text.cross_attention_dim = None
  no_text.temporal.text_context = True
  with pytest.raises(ValueError, match='needs a cross_attention_dim'):
    video_unet.validate_video_config(no_text)
  with pytest.raises(ValueError, match="'sd15'"):
    video_unet.video_unet_config('sd15')


def test_full_size_parameter_counts_and_names():
  sd_video = params_lib.count_params(video_unet.video_unet_config('sd_video'))
  assert sd_video['spatial'] == 859_520_964  # The SD 1.5 U-Net (diffusers count).
  config = video_unet.video_unet_config('driving')
  driving = params_lib.count_params(config)
  assert driving['spatial'] == 864_316_932  # Paper: an 865M image backbone.
  assert sd_video['temporal'] == 525_695_718 and driving['temporal'] == 561_683_590
  model = unet_lib.UNet(config)
  image = jax.eval_shape(lambda k: model.init(k, **unet_lib.example_inputs(config)),
                         jax.random.key(0))['params']
  video = _flat(params_lib.param_shapes(config))
  trainable = {p for p in video if re.search(params_lib.TEMPORAL_PATTERN, p)}
  assert set(video) - set(_flat(image)) == trainable and set(_flat(image)) <= set(video)
