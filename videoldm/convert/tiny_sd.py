"""Tiny random Stable Diffusion pipeline folders, for tests and CPU colabs.

`write_tiny_sd(path)` writes `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/` and `model_index.json` in the diffusers layout;
`write_tiny_upscaler(path)` a `StableDiffusionUpscalePipeline` folder of the
x4 upscaler's layout (a 7-channel U-Net with `only_cross_attention` and 1000
noise-level classes, an f=4 VAE, plus `low_res_scheduler/`). Both hold random
weights from diffusers / transformers PyTorch modules (every weight random,
also the ones those libraries zero-initialise), and a tokenizer whose
vocabulary is the 512 byte tokens plus a few merges. PyTorch, diffusers and
transformers are imported only when it is called (they are test dependencies).
"""

import json
import os

import numpy as np

from videoldm.models import tokenizer as tokenizer_lib

MAX_LENGTH = 12
MERGES = (('a', 'n'), ('an', 'd</w>'), ('m', 'o'), ('mo', 'v'), ('i', 'n'),
          ('in', 'g</w>'), ('l', 'e'), ('le', 'f'), ('lef', 't</w>'), ('mov', 'ing</w>'))
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64],
            layers_per_block=1, down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'],
            up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'], attention_head_dim=4,
            cross_attention_dim=32, norm_num_groups=8)
VAE = dict(block_out_channels=[32, 32], down_block_types=['DownEncoderBlock2D'] * 2,
           up_block_types=['UpDecoderBlock2D'] * 2, layers_per_block=1, norm_num_groups=8,
           latent_channels=4, sample_size=32, scaling_factor=0.5)
UPSCALER_UNET = dict(
    sample_size=16, in_channels=7, out_channels=4, block_out_channels=[32, 32, 64],
    layers_per_block=1, down_block_types=['DownBlock2D'] + ['CrossAttnDownBlock2D'] * 2,
    up_block_types=['CrossAttnUpBlock2D'] * 2 + ['UpBlock2D'], attention_head_dim=4,
    cross_attention_dim=32, norm_num_groups=8, num_class_embeds=1000,
    use_linear_projection=True, only_cross_attention=[True, True, False])
UPSCALER_VAE = dict(block_out_channels=[16, 32, 32], down_block_types=['DownEncoderBlock2D'] * 3,
                    up_block_types=['UpDecoderBlock2D'] * 3, layers_per_block=1,
                    norm_num_groups=8, latent_channels=4, sample_size=32, scaling_factor=0.08333)
# The published upscaler's schedulers: v-prediction, betas 1e-4..0.02 for both.
UPSCALER_SCHEDULER = dict(_class_name='DDIMScheduler', beta_start=0.0001, beta_end=0.02,
                          beta_schedule='scaled_linear', num_train_timesteps=1000,
                          prediction_type='v_prediction', set_alpha_to_one=False,
                          steps_offset=1, clip_sample=False)
UPSCALER_LOW_RES_SCHEDULER = dict(_class_name='DDPMScheduler', beta_start=0.0001, beta_end=0.02,
                                  beta_schedule='scaled_linear', num_train_timesteps=1000,
                                  clip_sample=False, variance_type='fixed_small')
SCHEDULER = dict(_class_name='DDIMScheduler', beta_start=0.00085, beta_end=0.012,
                 beta_schedule='scaled_linear', num_train_timesteps=1000,
                 prediction_type='epsilon', set_alpha_to_one=False, steps_offset=1,
                 clip_sample=False)


def tokenizer_vocab() -> dict[str, int]:
  """Byte tokens, their end-of-word forms, the merges, then bos and eos."""
  base = list(tokenizer_lib.bytes_to_unicode().values())
  tokens = (base + [c + '</w>' for c in base] + [a + b for a, b in MERGES]
            + ['<|startoftext|>', '<|endoftext|>'])
  return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(path: str) -> None:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(tokenizer_vocab(), f)
  with open(os.path.join(path, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in MERGES))
  with open(os.path.join(path, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump(dict(pad_token='<|endoftext|>', model_max_length=MAX_LENGTH), f)


def randomize_(module, seed: int = 0):
  """Random weights ~ N(0, 1/fan_in); norm scales 1 + N(0, 0.1); biases N(0, 0.1)."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith('bias'):
        param.copy_(0.1 * noise)
      elif param.ndim == 1:
        param.copy_(1.0 + 0.1 * noise)
      elif 'embedding' in name:
        param.copy_(noise)
      else:
        param.copy_(noise / np.sqrt(int(np.prod(param.shape[1:]))))
  return module.eval()


def _write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f)


def _write_text_encoder(path: str, seed: int) -> None:
  """A tiny random CLIP text encoder and its tokenizer under `path`."""
  import transformers  # pylint: disable=g-import-not-at-top
  text_config = transformers.CLIPTextConfig(
      vocab_size=len(tokenizer_vocab()), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
      bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=32)
  randomize_(transformers.CLIPTextModel(text_config), seed).save_pretrained(
      os.path.join(path, 'text_encoder'))
  write_tokenizer(os.path.join(path, 'tokenizer'))


def _write_pipeline(path: str, unet: dict, vae: dict, seed: int, schedulers: dict,
                    index: dict) -> str:
  """Random U-Net, VAE and text encoder, the tokenizer, scheduler configs and the index."""
  import diffusers  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  randomize_(diffusers.UNet2DConditionModel(**unet), seed).save_pretrained(
      os.path.join(path, 'unet'))
  randomize_(diffusers.AutoencoderKL(**vae), seed + 1).save_pretrained(os.path.join(path, 'vae'))
  _write_text_encoder(path, seed + 2)
  for name, config in schedulers.items():
    _write_json(os.path.join(path, name, 'scheduler_config.json'), config)
  _write_json(os.path.join(path, 'model_index.json'), dict(
      unet=['diffusers', 'UNet2DConditionModel'], vae=['diffusers', 'AutoencoderKL'],
      text_encoder=['transformers', 'CLIPTextModel'], tokenizer=['transformers', 'CLIPTokenizer'],
      **index))
  return path


def write_tiny_sd(path: str, seed: int = 0) -> str:
  """Writes the tiny pipeline folder at `path` (created) and returns `path`."""
  return _write_pipeline(path, UNET, VAE, seed, dict(scheduler=SCHEDULER), dict(
      _class_name='StableDiffusionPipeline', scheduler=['diffusers', 'DDIMScheduler']))


def write_tiny_upscaler(path: str, seed: int = 10) -> str:
  """Writes the tiny x4 upscaler pipeline folder at `path` (created) and returns `path`."""
  return _write_pipeline(
      path, UPSCALER_UNET, UPSCALER_VAE, seed,
      dict(scheduler=UPSCALER_SCHEDULER, low_res_scheduler=UPSCALER_LOW_RES_SCHEDULER),
      dict(_class_name='StableDiffusionUpscalePipeline', max_noise_level=350,
           scheduler=['diffusers', 'DDIMScheduler'],
           low_res_scheduler=['diffusers', 'DDPMScheduler']))
