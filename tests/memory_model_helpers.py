"""Tiny `text_video` train steps on cached latents: XLA's compiled memory vs the analytic model.

Shared by tests/test_memory_model.py and bench/memory_model.py. The step is the
trainer's (`train_step.make_train_step`) on abstract state (nothing is
allocated or run); XLA's peak is `arguments + outputs + temporaries - aliased`
(the donated state's outputs alias its arguments), the quantity
`memory_model.MemoryEstimate.total` estimates.
"""

import functools
import os
import tempfile

import jax
import jax.numpy as jnp

from videoldm import config_utils
from videoldm import stages
from videoldm.convert import tiny_sd
from videoldm.train import memory_model
from videoldm.train import sharding as sharding_lib
from videoldm.train import train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_DIM = 32


@functools.cache
def _tokenizer() -> str:
  path = tempfile.mkdtemp(prefix='memory_model_tokenizer_')
  tiny_sd.write_tokenizer(path)
  return path


def tiny_text_config(batch: int = 2, frames: int = 4, latent=(16, 16), channels=(32, 64),
                     remat: str = '', policy: str = 'nothing_saveable',
                     trainable: str | None = None, dtype: str = 'float32', **overrides):
  """`configs/sd_video.py:runlocal` (text_video) with a tiny U-Net, CLIP and VAE (f=2).

  Temporal ResBlocks keep the paper-size config's (3, 1, 1) kernels (runlocal's (3, 3, 3)
  run as per-tap 2D convs, whose XLA temporaries the model does not count).
  """
  config = config_utils.load_config(os.path.join(REPO, 'configs', 'sd_video.py:runlocal'))
  h, w = latent
  settings = {
      'model.tokenizer_path': _tokenizer(), 'batch_size': batch, 'data.num_frames': frames,
      'model.frame_size': (2 * h, 2 * w), 'data.image_size': 2 * h,
      'model.unet.block_out_channels': tuple(channels), 'model.unet.layers_per_block': 1,
      'model.unet.attention_levels': (True, False), 'model.unet.num_attention_heads': (2, 4),
      'model.unet.transformer_layers_per_block': (1, 1),
      'model.unet.cross_attention_dim': TEXT_DIM, 'model.unet.norm_num_groups': 8,
      'model.unet.attention_implementation': 'xla', 'model.unet.dtype': dtype,
      'model.text_encoder.vocab_size': len(tiny_sd.tokenizer_vocab()),
      'model.text_encoder.hidden_size': TEXT_DIM, 'model.text_encoder.intermediate_size': 64,
      'model.text_encoder.num_hidden_layers': 1, 'model.text_encoder.num_attention_heads': 4,
      'model.text_encoder.max_position_embeddings': tiny_sd.MAX_LENGTH,
      'model.text_encoder.projection_dim': TEXT_DIM,
      'model.autoencoder.block_out_channels': (32, 32), 'model.autoencoder.norm_num_groups': 8,
      'model.unet.temporal.conv_kernel_size': (3, 1, 1),
      'model.remat': remat, 'model.remat_policy': policy, **overrides}
  if trainable is not None:
    settings['trainable'] = trainable
  return config_utils.override(config, **settings)


def xla_peak(config) -> tuple[int, dict]:
  """(peak bytes, the memory analysis' fields) of the compiled train step of `config`."""
  stage = stages.get_stage(config.stage)(config)
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
  batch_sharding = sharding_lib.batch_sharding(mesh)
  b, f = config.batch_size, config.data.num_frames
  h, w = stage.latent_size()
  latent = jax.ShapeDtypeStruct((b, f, h, w, 4), jnp.float32, sharding=batch_sharding)
  batch = dict(latent_mean=latent, latent_logvar=latent,
               text_context=jax.ShapeDtypeStruct((b, stage.text_length, TEXT_DIM), jnp.float32,
                                                 sharding=batch_sharding))
  key = jax.random.key(0)
  state, state_sharding, labels, tx = train_step.plan_train_state(stage, config, mesh, batch,
                                                                  key)
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding, batch_sharding,
                                    key)
  # Backend optimisation level 0 compiles faster; buffer assignment (HLO level) is the same.
  analysis = step.lower(state, batch).compile(
      {'xla_backend_optimization_level': 0}).memory_analysis()
  fields = dict(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                temporaries=analysis.temp_size_in_bytes, aliased=analysis.alias_size_in_bytes)
  peak = (fields['arguments'] + fields['outputs'] + fields['temporaries'] - fields['aliased'])
  return peak, fields


def compare(config) -> tuple[float, memory_model.MemoryEstimate, dict]:
  """(analytic / XLA, the estimate, XLA's fields) for `config`."""
  stage = stages.get_stage(config.stage)(config)
  estimate = memory_model.estimate_from_config(config, stage)
  peak, fields = xla_peak(config)
  return estimate.total / peak, estimate, dict(fields, peak=peak)
