"""CLIP text encoder matching transformers' `CLIPTextModel`.

Parameter paths mirror the Hugging Face checkpoints (`text_model/embeddings/
token_embedding`, `text_model/encoder/layers_3/self_attn/q_proj`, ...), so
`videoldm.convert.transformers` converts state dicts mechanically.

Which hidden state conditions a U-Net (`output=`):
  * 'last': `final_layer_norm(output of the last layer)`. This is what the
    diffusers Stable Diffusion 1.x *and* 2.x pipelines feed. SD 2.x uses the
    penultimate layer of OpenCLIP ViT-H/14 (24 layers), but its Hugging Face
    text encoder already has that last layer removed (23 layers), so 'last' of
    the `'sd21'` config is exactly SD 2's conditioning.
  * 'penultimate': `final_layer_norm(output of the second-to-last layer)`, as
    diffusers' `clip_skip=1`; use it with a full 24-layer OpenCLIP encoder.
"""

import dataclasses
import typing

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import attention

_ACTIVATIONS = {
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
}
_OUTPUTS = ('last', 'penultimate')
# transformers CLIPTextConfig fields that describe the architecture or tokens.
_TRANSFORMERS_FIELDS = ('vocab_size', 'hidden_size', 'intermediate_size',
                        'num_hidden_layers', 'num_attention_heads',
                        'max_position_embeddings', 'hidden_act', 'layer_norm_eps',
                        'bos_token_id', 'eos_token_id', 'pad_token_id',
                        'projection_dim')


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Architecture of a CLIP text transformer (transformers field names).

  `eos_token_id == 2` marks the configs written before transformers PR #24773
  (all Stable Diffusion text encoders): the pooled output is then taken at the
  largest input id, otherwise at the first `eos_token_id`.
  """

  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  bos_token_id: int = 0
  eos_token_id: int = 2
  pad_token_id: int = 1
  projection_dim: int = 768
  attention_implementation: str | None = None

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'CLIP hidden_act {self.hidden_act!r} is not one of '
                       f'{sorted(_ACTIVATIONS)}.')
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'CLIP hidden_size {self.hidden_size} is not divisible by '
                       f'num_attention_heads {self.num_attention_heads}.')


_VARIANTS = {
    'tiny': dict(vocab_size=1000, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, projection_dim=32),
    # openai/clip-vit-large-patch14 text tower (Stable Diffusion 1.x).
    'sd15': dict(),
    # stabilityai/stable-diffusion-2-1 `text_encoder` (OpenCLIP ViT-H/14, 23 of 24 layers).
    'sd21': dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, hidden_act='gelu', projection_dim=512),
}


def clip_text_config(variant: str, **overrides) -> CLIPTextConfig:
  """Config for 'tiny', 'sd15' or 'sd21', with optional field overrides."""
  if variant not in _VARIANTS:
    raise ValueError(f'CLIP text variant {variant!r} is not one of {sorted(_VARIANTS)}.')
  return CLIPTextConfig(**{**_VARIANTS[variant], **overrides})


def clip_text_config_from_transformers(config: typing.Mapping) -> CLIPTextConfig:
  """Reads a transformers `CLIPTextConfig` dict (e.g. `text_encoder/config.json`)."""
  model_type = config.get('model_type', 'clip_text_model')
  if model_type != 'clip_text_model':
    raise ValueError(f'Text encoder config has model_type {model_type!r}; expected '
                     "'clip_text_model'.")
  defaults = CLIPTextConfig()
  values = {name: config.get(name, getattr(defaults, name))
            for name in _TRANSFORMERS_FIELDS}
  if isinstance(values['eos_token_id'], (list, tuple)):
    values['eos_token_id'] = values['eos_token_id'][0]
  return CLIPTextConfig(**values)


def clip_text_config_to_transformers(config: CLIPTextConfig) -> dict:
  """Inverse of `clip_text_config_from_transformers` (a loadable config dict)."""
  values = {name: getattr(config, name) for name in _TRANSFORMERS_FIELDS}
  return dict(architectures=['CLIPTextModel'], model_type='clip_text_model',
              attention_dropout=0.0, initializer_factor=1.0,
              initializer_range=0.02, **values)


def stage_dtype(model_config) -> jnp.dtype:
  """The compute dtype of a text stage's CLIP: its U-Net's (CLIP's config has no dtype)."""
  return jnp.dtype(model_config.unet.dtype)


class CLIPTextOutput(typing.NamedTuple):
  """`context` is what conditions a U-Net (see the module docstring).

  `penultimate_hidden_state` is the raw output of the second-to-last layer
  (transformers `hidden_states[-2]`, before `final_layer_norm`).
  """

  context: jax.Array  # (b, n, d)
  last_hidden_state: jax.Array  # (b, n, d), after final_layer_norm
  penultimate_hidden_state: jax.Array  # (b, n, d)
  pooled_output: jax.Array  # (b, d)


def _layer_norm(config: CLIPTextConfig, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype,
                      use_fast_variance=False, name=name)


class CLIPAttention(nn.Module):
  """Multi-head self-attention with biased `q_proj`/`k_proj`/`v_proj`/`out_proj`."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    width, heads = self.config.hidden_size, self.config.num_attention_heads
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
    split = lambda t: einops.rearrange(t, 'b n (h d) -> b n h d', h=heads)
    q, k, v = (split(dense(name)(x)) for name in ('q_proj', 'k_proj', 'v_proj'))
    out = attention.dot_product_attention(  # (b, n, heads, head_dim)
        q, k, v, mask, self.config.attention_implementation)
    return dense('out_proj')(einops.rearrange(out, 'b n h d -> b n (h d)'))


class CLIPEncoderLayer(nn.Module):
  """Pre-norm block: `layer_norm1` -> `self_attn`, `layer_norm2` -> `mlp` (fc1, fc2)."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    config = self.config
    x = x + CLIPAttention(config, self.dtype, name='self_attn')(
        _layer_norm(config, self.dtype, 'layer_norm1')(x), mask)
    hidden = _layer_norm(config, self.dtype, 'layer_norm2')(x)
    mlp = CLIPMLP(config, self.dtype, name='mlp')
    return x + mlp(hidden)


class CLIPMLP(nn.Module):
  """`fc1` -> activation (`hidden_act`) -> `fc2`."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = nn.Dense(self.config.intermediate_size, dtype=self.dtype, name='fc1')(x)
    hidden = _ACTIVATIONS[self.config.hidden_act](hidden)
    return nn.Dense(self.config.hidden_size, dtype=self.dtype, name='fc2')(hidden)


class CLIPTextEmbeddings(nn.Module):
  """`token_embedding` + `position_embedding`."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    config = self.config
    init = nn.initializers.normal(0.02)
    tokens = nn.Embed(config.vocab_size, config.hidden_size, dtype=self.dtype,
                      embedding_init=init, name='token_embedding')(input_ids)
    positions = nn.Embed(config.max_position_embeddings, config.hidden_size,
                         dtype=self.dtype, embedding_init=init,
                         name='position_embedding')(jnp.arange(input_ids.shape[1]))
    return tokens + positions[None]  # (b, n, d)


class CLIPEncoder(nn.Module):
  """`layers_0 ... layers_{n-1}`; returns the last two layer outputs."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    previous = x
    for index in range(self.config.num_hidden_layers):
      previous, x = x, CLIPEncoderLayer(self.config, self.dtype,
                                        name=f'layers_{index}')(x, mask)
    return previous, x


class CLIPTextTransformer(nn.Module):
  """transformers `CLIPTextTransformer`: embeddings, encoder, final_layer_norm."""

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               output: str = 'last') -> CLIPTextOutput:
    config = self.config
    if output not in _OUTPUTS:
      raise ValueError(f'CLIP text output {output!r} is not one of {_OUTPUTS}.')
    if input_ids.ndim != 2 or input_ids.shape[1] > config.max_position_embeddings:
      raise ValueError(f'input_ids must have shape (b, n) with n <= '
                       f'{config.max_position_embeddings}, got {input_ids.shape}.')
    n = input_ids.shape[1]
    mask = jnp.tril(jnp.ones((n, n), bool))[None, None]  # (1, 1, n, n), causal
    if attention_mask is not None:
      mask = mask & jnp.asarray(attention_mask, bool)[:, None, None, :]  # (b, 1, n, n)
    hidden = CLIPTextEmbeddings(config, self.dtype, name='embeddings')(input_ids)
    penultimate, last = CLIPEncoder(config, self.dtype, name='encoder')(hidden, mask)
    final_norm = _layer_norm(config, self.dtype, 'final_layer_norm')
    last = final_norm(last)
    if config.eos_token_id == 2:  # Older configs: eos is the largest id.
      eos_index = jnp.argmax(input_ids, axis=-1)
    else:
      eos_index = jnp.argmax(input_ids == config.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(last, eos_index[:, None, None], axis=1)[:, 0]  # (b, d)
    context = last if output == 'last' else final_norm(penultimate)
    return CLIPTextOutput(context, last, penultimate, pooled)


class CLIPTextModel(nn.Module):
  """transformers `CLIPTextModel`; the transformer lives under `text_model`.

  `__call__(input_ids (b, n) int, attention_mask (b, n) or None, output=
  'last'|'penultimate') -> CLIPTextOutput`.
  """

  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               output: str = 'last') -> CLIPTextOutput:
    return CLIPTextTransformer(self.config, self.dtype, name='text_model')(
        input_ids, attention_mask, output)
