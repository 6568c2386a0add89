"""KL autoencoder vs diffusers `AutoencoderKL` on the same random weights."""

import json
import typing

import diffusers
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.autoencoders import vae as diffusers_vae_lib

from videoldm.convert import diffusers_vae as convert
from videoldm.models import autoencoder
from videoldm.models import layers
import diffusers_reference as ref

TINY = dict(block_out_channels=(32, 64), down_block_types=('DownEncoderBlock2D',) * 2,
            up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=1,
            norm_num_groups=8, latent_channels=4, sample_size=16)


def _torch_state(model):
  return {name: value.numpy() for name, value in model.state_dict().items()}


@pytest.fixture(scope='module')
def pair():
  torch.manual_seed(0)
  reference = ref.randomize_(diffusers.AutoencoderKL(**TINY), seed=0)
  module, params = convert.autoencoder_from_diffusers(
      _torch_state(reference), dict(reference.config))
  return reference, module, params


@pytest.fixture(scope='module')
def image():
  return np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


def _nchw(x):
  return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)


def _rel_err(ours, reference):
  reference = reference.detach().permute(0, 2, 3, 1).numpy()
  return np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max()


def test_encode_matches_diffusers(pair, image):
  reference, module, params = pair
  with torch.no_grad():
    expected = reference.encode(_nchw(image)).latent_dist
  posterior = jax.jit(lambda p, x: module.apply({'params': p}, x, method='encode'))(
      params, image)
  assert posterior.mean.shape == (2, 8, 8, 4)
  assert _rel_err(posterior.mean, expected.mean) < 1e-4
  assert _rel_err(posterior.logvar, expected.logvar) < 1e-4


def test_decode_matches_diffusers(pair):
  reference, module, params = pair
  z = np.random.RandomState(1).randn(2, 8, 8, 4).astype(np.float32)
  with torch.no_grad():
    expected = reference.decode(_nchw(z)).sample
  ours = jax.jit(lambda p, z: module.apply({'params': p}, z, method='decode'))(params, z)
  assert ours.shape == (2, 16, 16, 3)
  assert _rel_err(ours, expected) < 1e-4


def test_diagonal_gaussian_matches_diffusers():
  moments = np.random.RandomState(2).randn(2, 4, 4, 6).astype(np.float32) * 3
  moments[0, 0, 0, 3] = 40.0  # Clipped to logvar 20.
  reversed_moments = moments[::-1].copy()
  ours = autoencoder.DiagonalGaussian.from_moments(moments)
  other = autoencoder.DiagonalGaussian.from_moments(reversed_moments)
  expected = diffusers_vae_lib.DiagonalGaussianDistribution(_nchw(moments))
  expected_other = diffusers_vae_lib.DiagonalGaussianDistribution(_nchw(reversed_moments))
  np.testing.assert_allclose(ours.logvar.max(), 20.0)
  np.testing.assert_allclose(ours.kl(), expected.kl().numpy(), rtol=1e-5)
  np.testing.assert_allclose(ours.kl(other), expected.kl(expected_other).numpy(), rtol=1e-5)
  sample = ours.sample(jax.random.key(0))
  noise = jax.random.normal(jax.random.key(0), ours.mean.shape)
  np.testing.assert_allclose(sample, ours.mean + jnp.exp(0.5 * ours.logvar) * noise,
                             rtol=1e-6)
  np.testing.assert_allclose(ours.nll(sample), expected.nll(_nchw(sample)).numpy(),
                             rtol=1e-5)


def test_round_trip_is_bit_exact(pair):
  reference, _, params = pair
  state = _torch_state(reference)
  back = convert.autoencoder_to_diffusers(params, dict(reference.config))
  assert sorted(back) == sorted(state)
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_old_attention_names_load(pair):
  reference, _, params = pair
  renames = {'to_q.': 'query.', 'to_k.': 'key.', 'to_v.': 'value.', 'to_out.0.': 'proj_attn.'}
  old = {}
  for name, value in _torch_state(reference).items():
    for new_name, old_name in renames.items():
      name = name.replace('attentions.0.' + new_name, 'attentions.0.' + old_name)
    old[name] = value
  assert 'encoder.mid_block.attentions.0.proj_attn.weight' in old
  _, loaded = convert.autoencoder_from_diffusers(old, dict(reference.config))
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


@pytest.mark.parametrize('change, message', [
    ('missing', 'missing from the state dict: decoder/up_blocks_1/resnets_1/conv2/bias'),
    ('extra', 'unexpected in the state dict: decoder.up_blocks.1.resnets.2.conv2.bias'),
    ('misshaped', r'mis-shaped: quant_conv.weight \(8, 8, 3, 3\)'),
])
def test_bad_state_dict_names_the_tensor(pair, change, message):
  reference = pair[0]
  state = _torch_state(reference)
  if change == 'missing':
    del state['decoder.up_blocks.1.resnets.1.conv2.bias']
  elif change == 'extra':
    state['decoder.up_blocks.1.resnets.2.conv2.bias'] = np.zeros(32, np.float32)
  else:
    state['quant_conv.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  with pytest.raises(ValueError, match=message):
    convert.autoencoder_from_diffusers(state, dict(reference.config))


def test_config_round_trip_and_errors(pair):
  reference = pair[0]
  config = autoencoder.autoencoder_config_from_diffusers(dict(reference.config))
  assert config == autoencoder.AutoencoderConfig(
      block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
      latent_channels=4, sample_size=16)
  written = autoencoder.autoencoder_config_to_diffusers(config)
  assert autoencoder.autoencoder_config_from_diffusers(written) == config
  as_json = lambda value: json.loads(json.dumps(value))
  for name, value in written.items():
    if not name.startswith('_'):
      assert as_json(reference.config[name]) == as_json(value), name
  with pytest.raises(ValueError, match="act_fn='gelu'"):
    autoencoder.autoencoder_config_from_diffusers({**TINY, 'act_fn': 'gelu'})
  with pytest.raises(ValueError, match='norm_num_groups 16'):
    autoencoder.autoencoder_config('tiny', block_out_channels=(32, 40), norm_num_groups=16)


def test_bad_input_shape(pair):
  _, module, params = pair
  with pytest.raises(ValueError, match=r'\(b, h, w, 3\), got \(2, 16, 16, 4\)'):
    module.apply({'params': params}, np.zeros((2, 16, 16, 4), np.float32), method='encode')


@pytest.mark.parametrize('variant, count', [('sd', 83_653_863),
                                            ('sd_x4_upscaler', 55_325_927)])
def test_parameter_count_matches_diffusers(variant, count):
  config = autoencoder.autoencoder_config(variant)
  shapes = convert.autoencoder_param_shapes(config)
  ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  with torch.device('meta'):
    reference = diffusers.AutoencoderKL.from_config(
        autoencoder.autoencoder_config_to_diffusers(config))
  assert ours == sum(p.numel() for p in reference.parameters()) == count


def test_f4_autoencoder_matches_diffusers(image):
  """The x4 upscaler's layout (three levels: f=4) encodes and decodes as diffusers does."""
  config = dict(TINY, block_out_channels=(16, 32, 32), down_block_types=('DownEncoderBlock2D',) * 3,
                up_block_types=('UpDecoderBlock2D',) * 3, scaling_factor=0.08333)
  reference = ref.randomize_(diffusers.AutoencoderKL(**config), seed=1)
  state = _torch_state(reference)
  module, params = convert.autoencoder_from_diffusers(state, dict(reference.config))
  assert module.config.downsampling_factor == 4
  mean = jax.jit(lambda p, x: module.apply({'params': p}, x, method='encode').mean)(params, image)
  decoded = jax.jit(lambda p, z: module.apply({'params': p}, z, method='decode'))(params, mean)
  with torch.no_grad():
    theirs_mean = reference.encode(_nchw(image)).latent_dist.mean
    theirs_decoded = reference.decode(theirs_mean).sample
  assert mean.shape == (2, 4, 4, 4)
  assert _rel_err(mean, theirs_mean) < 1e-4 and _rel_err(decoded, theirs_decoded) < 1e-4
  back = convert.autoencoder_to_diffusers(params, dict(reference.config))
  assert sorted(back) == sorted(state)
  assert all(np.array_equal(back[k], v) for k, v in state.items())


class _ScaledResBlock(layers.ResBlock):
  """A ResBlock with an extra zero-initialised `temporal_scale` parameter."""

  @nn.compact
  def __call__(self, x, scale_input=None):
    out = super().__call__(x)
    gain = self.param('temporal_scale', nn.initializers.zeros, ())
    return out * (1.0 + gain * scale_input)


class _ScaledAttention(autoencoder.AttentionBlock):

  def __call__(self, x, scale_input=None):
    return super().__call__(x)


class _ScaledMidBlock(autoencoder.MidBlock):
  resblock_class: typing.ClassVar = _ScaledResBlock
  attention_class: typing.ClassVar = _ScaledAttention


class _ScaledUpBlock(autoencoder.UpDecoderBlock):
  resblock_class: typing.ClassVar = _ScaledResBlock


class _ScaledDecoder(autoencoder.Decoder):
  mid_block_class: typing.ClassVar = _ScaledMidBlock
  up_block_class: typing.ClassVar = _ScaledUpBlock

  def post_process(self, x, scale_input=None):
    return super().post_process(x)


class _ScaledAutoencoder(autoencoder.AutoencoderKL):
  decoder_class: typing.ClassVar = _ScaledDecoder


def test_decoder_subclass_keeps_spatial_paths():
  """The hooks a temporal decoder uses: new params are added, old paths stay."""
  config = autoencoder.AutoencoderConfig(block_out_channels=(8, 8), layers_per_block=1,
                                         norm_num_groups=4)
  module, extended = autoencoder.AutoencoderKL(config), _ScaledAutoencoder(config)
  z = np.random.RandomState(3).randn(1, 4, 4, 4).astype(np.float32)
  shapes = lambda model, **kw: flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda: model.init(jax.random.key(0), z, method='decode', **kw))['params'])
  old, new = shapes(module), shapes(extended, scale_input=2.0)
  added = set(new) - set(old)
  assert set(old) <= set(new)
  assert added and all(path[-1] == 'temporal_scale' for path in added)
  rng = np.random.RandomState(4)
  flat = {path: 0.3 * rng.randn(*leaf.shape).astype(np.float32) for path, leaf in old.items()}
  params = flax.traverse_util.unflatten_dict(flat)
  merged = flax.traverse_util.unflatten_dict(
      {**flat, **{path: np.zeros((), np.float32) for path in added}})
  decode = jax.jit(lambda p, q: (
      extended.apply({'params': q}, z, scale_input=2.0, method='decode'),
      module.apply({'params': p}, z, method='decode')))
  np.testing.assert_allclose(*decode(params, merged), rtol=1e-6, atol=1e-6)
