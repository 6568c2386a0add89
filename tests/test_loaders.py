"""Disk loaders: saved tiny diffusers / transformers folders load without torch."""

import json

import diffusers
import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from videoldm.convert import diffusers as unet_convert
from videoldm.convert import diffusers_vae
from videoldm.convert import loaders
from videoldm.convert import transformers as text_convert
from videoldm.models import tokenizer as tokenizer_lib
import diffusers_reference as ref

VAE = dict(block_out_channels=(32, 64), down_block_types=('DownEncoderBlock2D',) * 2,
           up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=1,
           norm_num_groups=8, latent_channels=4, sample_size=16)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64],
            layers_per_block=1, down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'],
            up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'], attention_head_dim=4,
            cross_attention_dim=32, norm_num_groups=8)
MERGES = [('a', 'n'), ('an', 'd</w>'), ('m', 'o'), ('mo', 'v'), ('i', 'n'),
          ('in', 'g</w>'), ('l', 'e'), ('le', 'f'), ('lef', 't</w>'), ('mov', 'ing</w>')]
CAPTIONS = ['a 3 and a 7 moving left', 'Moving digits!']


def _tokenizer_vocab():
  base = list(tokenizer_lib.bytes_to_unicode().values())
  tokens = (base + [c + '</w>' for c in base] + [a + b for a, b in MERGES]
            + ['<|startoftext|>', '<|endoftext|>'])
  return {token: index for index, token in enumerate(tokens)}


def _write_tokenizer(path):
  path.mkdir(parents=True)
  (path / 'vocab.json').write_text(json.dumps(_tokenizer_vocab()), encoding='utf-8')
  (path / 'merges.txt').write_text(
      '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in MERGES), encoding='utf-8')
  (path / 'tokenizer_config.json').write_text(
      json.dumps(dict(pad_token='<|endoftext|>', model_max_length=12)))


def _text_config():
  return transformers.CLIPTextConfig(
      vocab_size=len(_tokenizer_vocab()), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=12,
      bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=32)


def _assert_same_params(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
  """A tiny Stable Diffusion pipeline folder and its in-memory conversions."""
  root = tmp_path_factory.mktemp('pipeline')
  torch.manual_seed(0)
  vae = ref.randomize_(diffusers.AutoencoderKL(**VAE), seed=1)
  unet = ref.randomize_(diffusers.UNet2DConditionModel(**UNET), seed=2)
  text_encoder = ref.randomize_(transformers.CLIPTextModel(_text_config()), seed=3)
  vae.save_pretrained(root / 'vae')
  unet.save_pretrained(root / 'unet')
  text_encoder.save_pretrained(root / 'text_encoder')
  _write_tokenizer(root / 'tokenizer')
  vae.save_pretrained(root / 'vae_sharded', max_shard_size='40KB')
  return dict(
      root=root, vae=vae, text_encoder=text_encoder,
      vae_params=diffusers_vae.autoencoder_from_diffusers(
          ref.state_dict_numpy(vae), dict(vae.config))[1],
      unet_params=unet_convert.unet_from_diffusers(
          ref.state_dict_numpy(unet), dict(unet.config))[1],
      text_params=text_convert.clip_text_from_transformers(
          ref.state_dict_numpy(text_encoder), text_encoder.config.to_dict())[1])


def test_vae_folder_matches_in_memory_conversion(pipeline):
  module, params = loaders.load_diffusers_folder(str(pipeline['root'] / 'vae'), 'vae')
  assert module.config.block_out_channels == (32, 64)
  _assert_same_params(params, pipeline['vae_params'])


def test_sharded_vae_folder_loads(pipeline):
  folder = pipeline['root'] / 'vae_sharded'
  assert (folder / 'diffusion_pytorch_model.safetensors.index.json').is_file()
  _, params = loaders.load_diffusers_folder(str(folder), 'vae')
  _assert_same_params(params, pipeline['vae_params'])


def test_text_folder_and_tokenizer_match_transformers(pipeline):
  root = pipeline['root']
  module, params = loaders.load_clip_text_folder(str(root / 'text_encoder'))
  _assert_same_params(params, pipeline['text_params'])
  tokenizer = loaders.load_tokenizer_folder(str(root / 'tokenizer'))
  ids = tokenizer(CAPTIONS)
  expected_ids = transformers.CLIPTokenizer.from_pretrained(str(root / 'tokenizer'))(
      CAPTIONS, padding='max_length', max_length=12, truncation=True,
      return_tensors='pt').input_ids
  np.testing.assert_array_equal(ids, expected_ids.numpy())
  ours = module.apply({'params': params}, ids)
  with torch.no_grad():
    expected = pipeline['text_encoder'](expected_ids)
  assert ref.relative_error(ours.last_hidden_state, expected.last_hidden_state) < 1e-4
  assert ref.relative_error(ours.pooled_output, expected.pooler_output) < 1e-4


def test_hub_layout_text_folder_loads(pipeline, tmp_path):
  """Hub checkpoints prefix `text_model.` and may hold the position_ids buffer."""
  source = pipeline['root'] / 'text_encoder'
  state = safetensors.numpy.load_file(str(source / 'model.safetensors'))
  hub = {'text_model.' + name: value for name, value in state.items()}
  hub['text_model.embeddings.position_ids'] = np.arange(12, dtype=np.int64)[None]
  safetensors.numpy.save_file(hub, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text((source / 'config.json').read_text())
  _, params = loaders.load_clip_text_folder(str(tmp_path))
  _assert_same_params(params, pipeline['text_params'])


def test_sd_pipeline_folder(pipeline):
  loaded = loaders.load_sd_pipeline(str(pipeline['root']))
  assert sorted(loaded) == ['text_encoder', 'tokenizer', 'unet', 'vae']
  _assert_same_params(loaded['unet'][1], pipeline['unet_params'])
  _assert_same_params(loaded['vae'][1], pipeline['vae_params'])
  _assert_same_params(loaded['text_encoder'][1], pipeline['text_params'])
  assert loaded['tokenizer'].pad_token_id == _tokenizer_vocab()['<|endoftext|>']
  assert loaded['unet'][0].config.cross_attention_dim == 32


def test_missing_paths_raise_file_not_found(pipeline, tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    loaders.load_sd_pipeline(str(tmp_path / 'nowhere'))
  (tmp_path / 'vae').mkdir()
  with pytest.raises(FileNotFoundError, match=r'vae/config.json'):
    loaders.load_diffusers_folder(str(tmp_path / 'vae'), 'vae')
  (tmp_path / 'vae' / 'config.json').write_text(json.dumps(VAE))
  with pytest.raises(FileNotFoundError, match='diffusion_pytorch_model.safetensors'):
    loaders.load_diffusers_folder(str(tmp_path / 'vae'), 'vae')
  (tmp_path / 'tokenizer').mkdir()
  with pytest.raises(FileNotFoundError, match=r'tokenizer/vocab.json'):
    loaders.load_tokenizer_folder(str(tmp_path / 'tokenizer'))
  shards = tmp_path / 'shards'
  shards.mkdir()
  (shards / 'model.safetensors.index.json').write_text(
      json.dumps(dict(weight_map={'a': 'model-00001-of-00002.safetensors'})))
  with pytest.raises(FileNotFoundError, match='model-00001-of-00002.safetensors'):
    loaders.read_safetensors(str(shards), 'model')


def test_wrong_folder_kind_raises_value_error(pipeline):
  with pytest.raises(ValueError, match="holds a 'AutoencoderKL'; kind='unet'"):
    loaders.load_diffusers_folder(str(pipeline['root'] / 'vae'), 'unet')
  with pytest.raises(ValueError, match="kind 'vqgan'"):
    loaders.load_diffusers_folder(str(pipeline['root'] / 'vae'), 'vqgan')
