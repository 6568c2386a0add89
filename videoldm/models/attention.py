"""Attention blocks with diffusers parameter names.

`Attention` (to_q/to_k/to_v/to_out_0), `FeedForward` (GEGLU, net_0/net_2),
`BasicTransformerBlock` (also the block of `temporal.TemporalTransformer`) and
`SpatialTransformer` (= diffusers `Transformer2DModel`, continuous input).
The fused kernel used by `dot_product_attention` is chosen by `implementation`
(config field `attention_implementation`): None (automatic), 'xla', 'cudnn' or
'blocked'. None means 'blocked' for long sequences on CPU, cuDNN's fused kernel
on GPU for bf16/fp16 inputs it supports (else XLA; `jax.nn`'s own None is XLA),
and XLA otherwise. 'blocked' is exact attention computed for blocks of queries in a
loop, so each block's score matrix stays cache-sized; on CPU it runs the
1024-token self-attention of a 32x32 latent 6x faster than one XLA call
(bench/RESULTS.md, figure 1).
"""

from typing import Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import layers

_IMPLEMENTATIONS = (None, 'xla', 'cudnn', 'blocked')
# q, k, v `(b, n, heads, head_dim)` -> `(b, n, heads, head_dim)`.
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# Score elements per query block (4 MiB of float32): measured best on CPU.
_BLOCK_SCORES = 2**20
# On CPU, None picks 'blocked' from this many queries on.
_MIN_BLOCKED_QUERIES = 256
# On GPU, None tries cuDNN for these input dtypes; it raises these at trace time when the
# shapes, dtypes or the installed cuDNN are unsupported, and XLA runs instead.
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_UNSUPPORTED = (RuntimeError, ValueError, NotImplementedError)


def _query_block_size(q: jax.Array, k: jax.Array) -> int:
  """Power-of-two query block with about `_BLOCK_SCORES` scores, at least 8."""
  b, _, heads, _ = q.shape
  per_query = b * heads * k.shape[1]
  block = 8
  while block * 2 * per_query <= _BLOCK_SCORES:
    block *= 2
  return block


def _blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                       mask: jax.Array | None) -> jax.Array:
  """Exact attention over query blocks in a loop (one compiled block body).

  Keys and values are put head-major once, outside the loop: inside it, XLA
  would transpose them for every block (a third of a CPU U-Net forward).
  Numerics follow `jax.nn.dot_product_attention`'s XLA path (float32 logits and
  softmax, masked logits at its large negative value), except that the softmax
  is normalised after the value matmul.
  """
  n, head_dim = q.shape[1], q.shape[-1]
  block = _query_block_size(q, k)
  if block >= n:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')
  blocks = -(-n // block)
  q = jnp.pad(q, ((0, 0), (0, blocks * block - n), (0, 0), (0, 0)))
  q = einops.rearrange(q, 'b (nb n) h d -> nb b h n d', n=block)  # (blocks, b, heads, block, d)
  k = einops.rearrange(k, 'b m h d -> b h m d')
  v = einops.rearrange(v, 'b m h d -> b h m d')
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  large_negative = -0.7 * float(jnp.finfo(logits_dtype).max)

  def attend(q_block):  # (b, heads, block, d) -> (b, heads, block, d)
    logits = jnp.einsum('bhnd,bhmd->bhnm', q_block, k, preferred_element_type=logits_dtype)
    logits = logits * jnp.asarray(head_dim**-0.5, logits_dtype)
    if mask is not None:
      logits = jnp.where(mask, logits, large_negative)
    logits = logits.astype(jnp.float32)
    # Softmax normalised after the value matmul: one pass less over the scores.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    out = jnp.einsum('bhnm,bhmd->bhnd', weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return (out / weights.sum(-1, keepdims=True)).astype(v.dtype)

  out = jax.lax.map(attend, q)
  return einops.rearrange(out, 'nb b h n d -> b (nb n) h d')[:, :n]  # (b, n, heads, d)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None,
                          implementation: str | None = None) -> jax.Array:
  """Scaled dot-product attention over `(b, n, heads, head_dim)` arrays.

  Args:
    q: queries `(b, n, heads, head_dim)`.
    k: keys `(b, m, heads, head_dim)`.
    v: values `(b, m, heads, head_dim)`.
    mask: optional boolean, True = attend; `(b, m)` (a key mask) or anything
      broadcastable to `(b, heads, n, m)`.
    implementation: None (automatic: see the module docstring), 'xla', 'cudnn'
      (see `jax.nn.dot_product_attention`) or 'blocked' (query blocks in a
      loop; `mask` must then not vary over queries).

  Returns:
    `(b, n, heads, head_dim)`.
  """
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f'Attention implementation {implementation!r} is not one of '
                     f'{_IMPLEMENTATIONS}.')
  if mask is not None:
    mask = jnp.asarray(mask, dtype=bool)
    if mask.ndim == 2:
      mask = mask[:, None, None, :]  # (b, 1, 1, m)
  query_independent_mask = mask is None or mask.shape[-2] == 1
  backend = jax.default_backend()
  if implementation is None and backend == 'cpu':
    if q.shape[1] >= _MIN_BLOCKED_QUERIES and query_independent_mask:
      implementation = 'blocked'
  if implementation is None and backend == 'gpu' and q.dtype in _CUDNN_DTYPES:
    try:
      return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='cudnn')
    except _CUDNN_UNSUPPORTED:
      implementation = 'xla'
  if implementation == 'blocked':
    if not query_independent_mask:
      raise ValueError(f'Blocked attention needs a mask that does not vary over queries; '
                       f'got mask shape {mask.shape}.')
    return _blocked_attention(q, k, v, mask)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation or 'xla')


class Attention(nn.Module):
  """Multi-head attention; self-attention when `context` is None."""

  heads: int
  dim_head: int
  out_dim: int | None = None
  implementation: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None,
               attention_fn: AttentionFn | None = None) -> jax.Array:
    """`attention_fn(q, k, v)` (default: `dot_product_attention` with `mask`) mixes the heads."""
    inner = self.heads * self.dim_head
    context = x if context is None else context
    dense = lambda name: nn.Dense(inner, use_bias=False, dtype=self.dtype, name=name)
    split = lambda t: einops.rearrange(t, 'b n (h d) -> b n h d', h=self.heads)
    q = split(dense('to_q')(x))  # (b, n, heads, dim_head)
    k = split(dense('to_k')(context))  # (b, m, heads, dim_head)
    v = split(dense('to_v')(context))
    if attention_fn is None:
      out = dot_product_attention(q, k, v, mask, self.implementation)
    else:
      out = attention_fn(q, k, v)  # (b, n, heads, dim_head)
    out = einops.rearrange(out, 'b n h d -> b n (h d)')
    out_dim = self.out_dim or x.shape[-1]
    return nn.Dense(out_dim, dtype=self.dtype, name='to_out_0')(out)


class GEGLU(nn.Module):
  """`proj` to 2 * inner features; value * exact-GELU(gate)."""

  inner_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = nn.Dense(2 * self.inner_dim, dtype=self.dtype, name='proj')(x)
    value, gate = jnp.split(hidden, 2, axis=-1)
    return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """diffusers `FeedForward(activation_fn='geglu')`: `net_0` (GEGLU), `net_2`."""

  dim: int
  mult: float = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = GEGLU(int(self.dim * self.mult), dtype=self.dtype, name='net_0')(x)
    return nn.Dense(self.dim, dtype=self.dtype, name='net_2')(hidden)


class BasicTransformerBlock(nn.Module):
  """Pre-norm block: self-attention, cross-attention (if `cross_attention`), GEGLU MLP.

  The one transformer block of the package, for tokens `(b, n, c)` (diffusers'
  `BasicTransformerBlock`, in `SpatialTransformer`) and for the temporal
  transformer's `(b, n, f, c)` (in `temporal.TemporalTransformer`):
    `norm1`/`attn1`: self-attention along axis -2 (tokens, or frames), every
      axis before it folded into the batch;
    `norm2`/`attn2`: every position of example i attends to `context[i]`
      `(b, m, d)` (with an optional key `mask` `(b, m)`);
    `norm3`/`ff`: GEGLU feed-forward of width `dim` (= `c`).
  Without `cross_attention` there is no `norm2`/`attn2` (as diffusers with
  `cross_attention_dim=None`). With it and `context=None`, `attn2` attends to
  `x` itself, as diffusers does. With `only_cross_attention` (diffusers' flag
  of the same name, e.g. Stable Diffusion's x4 upscaler) `attn1` also attends
  to the context instead of to the tokens.
  `self_attention_fn` replaces `attn1`'s scaled dot-product (see `Attention`),
  e.g. by a masked attention over the tokens of several frames; params are unchanged.
  """

  dim: int
  heads: int
  dim_head: int
  cross_attention: bool = True
  implementation: str | None = None
  dtype: jnp.dtype = jnp.float32
  only_cross_attention: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None,
               self_attention_fn: AttentionFn | None = None) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype,
                                     use_fast_variance=False, name=name)
    attention = lambda name: Attention(self.heads, self.dim_head,
                                       implementation=self.implementation,
                                       dtype=self.dtype, name=name)
    if self.only_cross_attention:
      queries, packed = einops.pack([norm('norm1')(x)], 'b * c')  # (b, n ..., c)
      [attended] = einops.unpack(attention('attn1')(queries, context, mask), packed, 'b * c')
    else:
      sequences, packed = einops.pack([norm('norm1')(x)], '* s c')  # (b ..., s, c)
      [attended] = einops.unpack(attention('attn1')(sequences, attention_fn=self_attention_fn),
                                 packed, '* s c')
    x = x + attended
    if self.cross_attention:
      # Each query attends to its example's context on its own, so flattening
      # the positions equals broadcasting the context to every location.
      queries, packed = einops.pack([norm('norm2')(x)], 'b * c')  # (b, n ..., c)
      [attended] = einops.unpack(attention('attn2')(queries, context, mask), packed, 'b * c')
      x = x + attended
    return x + FeedForward(self.dim, dtype=self.dtype, name='ff')(norm('norm3')(x))


class SpatialTransformer(nn.Module):
  """diffusers `Transformer2DModel` on `(b, h, w, c)` with optional context `(b, m, d)`.

  `proj_in`/`proj_out` are 1x1 convolutions (SD 1.x) or Dense layers when
  `use_linear_projection` (SD 2.x); the output is added to the input.
  `only_cross_attention`: see `BasicTransformerBlock`.
  """

  heads: int
  dim_head: int
  depth: int = 1
  use_linear_projection: bool = False
  cross_attention: bool = True
  norm_num_groups: int = 32
  implementation: str | None = None
  dtype: jnp.dtype = jnp.float32
  only_cross_attention: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    b, h, w, channels = x.shape
    inner = self.heads * self.dim_head
    if self.use_linear_projection:
      project = lambda f, name: nn.Dense(f, dtype=self.dtype, name=name)
    else:
      project = lambda f, name: layers.conv1x1(f, self.dtype, name)
    hidden = layers.group_norm(self.norm_num_groups, 1e-6, self.dtype, 'norm')(x)
    hidden = project(inner, 'proj_in')(hidden)
    hidden = einops.rearrange(hidden, 'b h w c -> b (h w) c')  # (b, h*w, inner)
    for index in range(self.depth):
      hidden = BasicTransformerBlock(
          inner, self.heads, self.dim_head, cross_attention=self.cross_attention,
          implementation=self.implementation, dtype=self.dtype,
          only_cross_attention=self.only_cross_attention,
          name=f'transformer_blocks_{index}')(hidden, context, mask)
    hidden = einops.rearrange(hidden, 'b (h w) c -> b h w c', h=h, w=w)
    return x + project(channels, 'proj_out')(hidden)
