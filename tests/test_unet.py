"""Image U-Net: parity with diffusers UNet2DConditionModel and strict conversion."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from videoldm.convert import common
from videoldm.convert import diffusers as convert
from videoldm.convert import tiny_sd
from videoldm.models import unet as unet_lib
import diffusers_reference as ref

# SD-1-like: conv projections, heads per level (diffusers' attention_head_dim),
# class labels, non-default timestep embedding, scale-shift (AdaGN) ResBlocks.
SD1_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64],
    layers_per_block=1, down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'],
    up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'], attention_head_dim=4,
    cross_attention_dim=16, norm_num_groups=8, num_class_embeds=5,
    flip_sin_to_cos=False, freq_shift=1, resnet_time_scale_shift='scale_shift')
# SD-2-like: linear projections, 16-channel heads, attention at every level,
# two transformer layers at the lowest level.
SD2_TINY = dict(
    sample_size=16, in_channels=5, out_channels=4, block_out_channels=[32, 64],
    layers_per_block=1, down_block_types=['CrossAttnDownBlock2D'] * 2,
    up_block_types=['CrossAttnUpBlock2D'] * 2, attention_head_dim=[2, 4],
    transformer_layers_per_block=[1, 2], cross_attention_dim=16, norm_num_groups=8,
    use_linear_projection=True)
# SD-x4-upscaler-like: 7 input channels (latents + RGB), no attention on the first level,
# `only_cross_attention` on some levels, the noise level as one of 1000 classes.
UPSCALER_TINY = dict(tiny_sd.UPSCALER_UNET, cross_attention_dim=16)
CASES = dict(sd1=SD1_TINY, sd2=SD2_TINY, upscaler=UPSCALER_TINY)


def _torch_unet(config, seed=0):
  torch.manual_seed(seed)
  return ref.randomize_(UNet2DConditionModel(**config), seed)


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request):
  config = CASES[request.param]
  torch_model = _torch_unet(config)
  state_dict = ref.state_dict_numpy(torch_model)
  model, params = convert.unet_from_diffusers(state_dict, torch_model.config)
  return dict(config=config, torch_model=torch_model, state_dict=state_dict,
              model=model, params=params)


def test_unet_matches_diffusers(case):
  config, torch_model, model = case['config'], case['torch_model'], case['model']
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 16, config['in_channels'])).astype(np.float32)
  t = np.array([3.0, 742.0], np.float32)
  context = rng.standard_normal((2, 5, 16)).astype(np.float32)
  labels = np.array([1, config['num_class_embeds'] - 1]) if config.get('num_class_embeds') else None
  ours = jax.jit(model.apply)({'params': case['params']}, x, t, context, labels)
  with torch.no_grad():
    theirs = torch_model(ref.nchw(x), torch.from_numpy(t), torch.from_numpy(context),
                         class_labels=None if labels is None else torch.from_numpy(labels))
  assert ours.shape == x.shape[:3] + (config['out_channels'],)
  assert ref.relative_error(ours, ref.nhwc(theirs.sample)) < 1e-4


def test_round_trip_is_bit_exact(case):
  back = convert.unet_to_diffusers(case['params'], case['torch_model'].config)
  assert sorted(back) == sorted(case['state_dict'])
  for key, value in case['state_dict'].items():
    assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_corrupt_state_dicts_are_rejected_by_name():
  torch_model = _torch_unet(SD1_TINY)
  good = ref.state_dict_numpy(torch_model)
  key = 'down_blocks.0.attentions.0.proj_in.weight'
  missing = {k: v for k, v in good.items() if k != key}
  with pytest.raises(ValueError, match=r'missing.*down_blocks_0/attentions_0/proj_in/kernel'):
    convert.unet_from_diffusers(missing, torch_model.config)
  extra = dict(good, **{'mid_block.resnets.2.conv1.weight': np.zeros((64, 64, 3, 3))})
  with pytest.raises(ValueError, match=r'unexpected.*mid_block\.resnets\.2\.conv1\.weight'):
    convert.unet_from_diffusers(extra, torch_model.config)
  misshaped = dict(good, **{'conv_out.weight': np.zeros((3, 32, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r'mis-shaped.*conv_out\.weight'):
    convert.unet_from_diffusers(misshaped, torch_model.config)


def test_unsupported_diffusers_config_is_rejected():
  with pytest.raises(ValueError, match='addition_embed_type'):
    convert.unet_config_from_diffusers(dict(SD1_TINY, addition_embed_type='text_time'))
  with pytest.raises(ValueError, match='up_block_types'):
    convert.unet_config_from_diffusers(dict(SD1_TINY, up_block_types=['UpBlock2D'] * 2))


@pytest.mark.parametrize('variant', ['sd15', 'sd21', 'sd_x4_upscaler'])
def test_full_size_parameters_match_diffusers(variant):
  config = unet_lib.unet_config(variant)
  with torch.device('meta'):
    torch_model = UNet2DConditionModel(**convert.unet_config_to_diffusers(config))
  theirs = {k: int(np.prod(v.shape)) for k, v in torch_model.state_dict().items()}
  shapes = flax.traverse_util.flatten_dict(convert.unet_param_shapes(config))
  ours = {common.flax_path_to_torch_key(p): int(np.prod(s.shape)) for p, s in shapes.items()}
  assert ours == theirs
  assert sum(ours.values()) == {'sd15': 859_520_964, 'sd21': 865_910_724,
                                'sd_x4_upscaler': 473_398_020}[variant]


@pytest.mark.parametrize('variant', ['tiny', 'sd15', 'sd21', 'sd_x4_upscaler'])
def test_config_round_trips_through_diffusers(variant):
  config = unet_lib.unet_config(variant)
  back = convert.unet_config_from_diffusers(convert.unet_config_to_diffusers(config))
  back.prediction_type = config.prediction_type  # Not part of a diffusers U-Net.
  assert back.to_dict() == config.to_dict()


@pytest.fixture(scope='module')
def tiny():
  config = unet_lib.unet_config('tiny')
  config.num_class_embeds = 3
  model = unet_lib.UNet(config)
  # Random params from the shapes: compiling `model.init` takes ~20 s on CPU.
  shapes = jax.eval_shape(model.init, jax.random.key(0), **unet_lib.example_inputs(config))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape, np.float32),
                        shapes['params'])
  return config, model, params


def test_missing_class_labels_mean_the_null_class(tiny):
  config, model, params = tiny
  inputs = unet_lib.example_inputs(config, batch_size=2, size=8)
  inputs['x'] = jax.random.normal(jax.random.key(1), inputs['x'].shape)
  null = jnp.full((2,), unet_lib.null_class_label(config))
  assert unet_lib.null_class_label(config) == 2

  @jax.jit
  def outputs(params, inputs):
    apply = lambda labels: model.apply({'params': params}, **inputs, class_labels=labels)
    return apply(None), apply(null), apply(jnp.array([0, 1]))

  unconditional, with_null, other = outputs(params, inputs)
  np.testing.assert_array_equal(unconditional, with_null)
  assert not np.allclose(unconditional, other)


@pytest.mark.parametrize('change, message', [
    (dict(x=jnp.zeros((1, 8, 8, 3))), r'\(b, h, w, 4\)'),
    (dict(x=jnp.zeros((1, 9, 9, 4))), 'not divisible by 2'),
    (dict(context=None), r'context has shape None'),
    (dict(context=jnp.zeros((1, 2, 7))), r'context has shape \(1, 2, 7\)'),
    (dict(timesteps=jnp.zeros((3,))), r'timesteps have shape \(3,\)'),
])
def test_bad_inputs_raise_value_error(tiny, change, message):
  config, model, params = tiny
  inputs = dict(unet_lib.example_inputs(config, size=8), **change)
  with pytest.raises(ValueError, match=message):
    model.apply({'params': params}, **inputs)


def test_bad_config_raises_value_error():
  config = unet_lib.unet_config('tiny')
  config.num_attention_heads = (2, 5)
  with pytest.raises(ValueError, match='64 channels cannot be split into 5'):
    unet_lib.validate_config(config)
  with pytest.raises(ValueError, match="'sdxl'"):
    unet_lib.unet_config('sdxl')
  config = unet_lib.unet_config('tiny')
  config.resnet_time_scale_shift = 'film'
  with pytest.raises(ValueError, match="resnet_time_scale_shift 'film' is not one of"):
    unet_lib.validate_config(config)


def test_class_embedding_starts_at_unit_scale_like_torch_embedding():
  # flax's default (std 1/sqrt(features)) left class labels ~16x weaker than the
  # time embedding, and a from-scratch class-conditional LDM learned to ignore them.
  config = unet_lib.unet_config('tiny')
  config.update(num_class_embeds=11, block_out_channels=(8,), attention_levels=(False,),
                norm_num_groups=4, num_attention_heads=(1,), transformer_layers_per_block=(1,))
  variables = unet_lib.UNet(config).init(jax.random.key(0), **unet_lib.example_inputs(config),
                                         class_labels=jnp.zeros((1,), jnp.int32))
  table = variables['params']['class_embedding']['embedding']  # (11, 32)
  assert table.shape == (11, 32)
  assert 0.85 < float(np.std(table)) < 1.15
  assert abs(float(np.mean(table))) < 0.15
