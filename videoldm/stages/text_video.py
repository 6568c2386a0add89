"""Stage `text_video`: a Stable Diffusion backbone turned into a text-to-video LDM.

Paper Sec. 4.2: the spatial layers (U-Net, VAE, CLIP text encoder) come from an
SD pipeline folder and stay frozen; temporal layers are inserted and trained on
captioned video, with the text also cross-attended in the temporal
transformers (`model.unet.temporal.text_context`). With
`model.unet.temporal.context_frames` the model is also a prediction model
(S ~ `model.context_probs` context frames, S = 0 is plain text-to-video), so
the sampling stack can extend videos window by window.

Param tree: `autoencoder/`, `latent_scale`, `text_encoder/` (frozen CLIP),
`unet/` (spatial + temporal). `init_params` only builds random params; the SD
weights arrive through `init_from.path` (a file written by
`python -m videoldm.convert.temporal_transfer --sd_path=... --out=...`).
`model.joint` mixes images into the batches as the video stage does (joint
image-video training, `stages.denoising`).

Memory options (config.model):
  remat: '' (off) or 'blocks' (`nn.remat` on every U-Net block, `models.remat`);
    remat_policy: a `jax.checkpoint_policies` name ('nothing_saveable', ...).
  unet.dtype: 'bfloat16' computes the U-Net and text encoder in bf16; the
    trainable params (master weights, optimiser state) stay float32 and the
    frozen U-Net and text encoder params are held in bf16
    (`train.state.held_params`).
  decode_chunk: frames per VAE decoder call (0 = all at once).
"""

import einops
import jax
import jax.numpy as jnp
import numpy as np

from videoldm.diffusion import sampling
from videoldm.models import remat
from videoldm.models import text as text_lib
from videoldm.models import tokenizer as tokenizer_lib
from videoldm.stages import denoising
from videoldm.stages import latents
from videoldm.stages import video as video_stage

class TextVideoStage(video_stage.VideoStage):
  """Text-to-video (and text-conditioned prediction) LDM on captioned video."""

  text_conditioned = True

  def __init__(self, config):
    super().__init__(config)
    self.unet = remat.make_unet(config.model)
    text_config = text_lib.CLIPTextConfig(**config.model.text_encoder.to_dict())
    self.text_encoder = text_lib.CLIPTextModel(text_config, text_lib.stage_dtype(config.model))
    self.text_length = text_config.max_position_embeddings
    self._tokenizer = None

  # --------------------------------------------------------------- text
  @property
  def tokenizer(self) -> tokenizer_lib.CLIPTokenizer:
    """The CLIP tokenizer of `config.model.tokenizer_path` (read on first use)."""
    if self._tokenizer is None:
      self._tokenizer = tokenizer_lib.CLIPTokenizer.from_folder(self.config.model.tokenizer_path)
    return self._tokenizer

  def tokenize(self, texts) -> np.ndarray:
    """Captions -> int32 token ids `(b, text_length)` (the data pipeline's `caption`)."""
    return self.tokenizer(list(texts), max_length=self.text_length)

  def null_ids(self, batch_size: int) -> np.ndarray:
    """Token ids of the empty prompt (the unconditional branch of CFG)."""
    return np.repeat(self.tokenize(['']), batch_size, axis=0)

  def encode_text(self, params, ids: jax.Array) -> jax.Array:
    """Token ids `(b, n)` -> frozen CLIP context `(b, n, d)`."""
    out = self.text_encoder.apply({'params': params['text_encoder']}, ids,
                                  output=self.config.model.text_output)
    return jax.lax.stop_gradient(out.context.astype(jnp.float32))

  # -------------------------------------------------------------- frames
  def latent_size(self) -> tuple[int, int]:
    factor = self.autoencoder.config.downsampling_factor
    h, w = self.config.model.frame_size
    return h // factor, w // factor

  def preprocess(self, batch):
    """Centre-crops the data frames to `model.frame_size` (h, w) (identity when they match)."""
    if 'video' not in batch:  # Cached latents (`videoldm.cache`), cropped when cached.
      return batch
    h, w = self.config.model.frame_size
    video = batch['video']
    height, width = video.shape[2:4]
    if height < h or width < w:
      raise ValueError(f'Data frames of {height}x{width} are smaller than model.frame_size '
                       f'{h}x{w}; raise data.image_size (height) or data.image_width.')
    top, left = (height - h) // 2, (width - w) // 2
    return dict(batch, video=video[:, :, top:top + h, left:left + w])

  def decode(self, params, z: jax.Array) -> jax.Array:
    """Latents `(b, f, h, w, c)` -> frames, `model.decode_chunk` frames per decoder call."""
    chunk = self.config.model.decode_chunk
    frames = einops.rearrange(z, 'b f h w c -> (b f) 1 h w c')  # ((b f), 1, h, w, c)
    n = frames.shape[0]
    if not chunk or chunk >= n:
      decoded = latents.decode_latents(self.autoencoder, params, frames)
    else:
      pad = -n % chunk
      frames = jnp.concatenate([frames, jnp.zeros((pad,) + frames.shape[1:])], axis=0)
      chunks = einops.rearrange(frames, '(n k) 1 h w c -> n k h w c', k=chunk)
      decoded = jax.lax.map(lambda c: latents.decode_latents(self.autoencoder, params, c[:, None]),
                            chunks)  # (n, k, 1, H, W, 3)
      decoded = einops.rearrange(decoded, 'n k 1 h w c -> (n k) 1 h w c')[:n]
    return einops.rearrange(decoded, '(b f) 1 h w c -> b f h w c', b=z.shape[0])

  # ---------------------------------------------------------------- model
  def init_params(self, rng, batch):
    ae_key, text_key, unet_key = jax.random.split(rng, 3)
    h, w = self.config.model.frame_size
    ae_params = self.autoencoder.init(ae_key, jnp.zeros((1, h, w, 3)))['params']
    ids = jnp.zeros((1, self.text_length), jnp.int32)
    text_params = self.text_encoder.init(text_key, ids)['params']
    unet_cfg = self.config.model.unet
    z = jnp.zeros((1, 1) + self.latent_size() + (unet_cfg.out_channels,))
    extra = {}
    if unet_cfg.temporal.context_frames:
      extra = dict(context_latents=z, context_mask=jnp.zeros(z.shape[:2]))
    if unet_cfg.temporal.regime_conditioning:  # The interpolation regime (text_interpolation).
      extra['regime'] = jnp.zeros((1,))
    context = jnp.zeros((1, self.text_length, unet_cfg.cross_attention_dim))
    unet_params = self.unet.init(unet_key, z, jnp.zeros((1,), jnp.int32), context=context,
                                 **extra)['params']
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    return dict(autoencoder=ae_params, latent_scale=scale, text_encoder=text_params,
                unet=unet_params)

  def apply_unet(self, params, x, t, text_context, context_latents, mask,
                 image_only_indicator=None):
    extra = {}
    if self.config.model.unet.temporal.context_frames:
      extra = dict(context_latents=context_latents, context_mask=mask)
    out = self.unet.apply({'params': params['unet']}, x, t, context=text_context,
                          image_only_indicator=image_only_indicator, **extra)
    return out.astype(jnp.float32)

  def cache_entries(self, params, batch) -> dict:
    """The frames' posterior and the caption's frozen CLIP context `(n, d)`."""
    return {**super().cache_entries(params, batch),
            'text_context': self.encode_text(params, batch['caption'])}

  def training_text_context(self, params, batch, drop_key) -> tuple[jax.Array, jax.Array]:
    """(CLIP context `(b, n, d)`, dropped `(b, 1)`): the caption's, or the empty prompt's with
    probability `model.caption_dropout`; from the cache's `text_context` when present."""
    if 'caption' not in batch and 'text_context' not in batch:
      raise ValueError(f'The {self.config.stage} stage needs captions, but the batch has only '
                       f'{sorted(batch)}; use a dataset with a caption feature.')
    b = (batch['text_context'] if 'text_context' in batch else batch['caption']).shape[0]
    drop = jax.random.bernoulli(drop_key, self.config.model.caption_dropout, (b, 1))
    if 'text_context' in batch:  # Cached: the empty prompt's context where dropped.
      null = self.encode_text(params, jnp.asarray(self.null_ids(1)))
      return jnp.where(drop[:, :, None], null, batch['text_context'].astype(jnp.float32)), drop
    ids = jnp.where(drop, jnp.asarray(self.null_ids(b)), batch['caption'])
    return self.encode_text(params, ids), drop

  def loss_fn(self, params, batch, rng, step):
    del step
    enc_key, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
    z0 = latents.batch_latents(self.autoencoder, params, batch, enc_key)  # Pixels or cache.
    b, f = z0.shape[:2]
    num_images = denoising.num_image_examples(self.config, b)
    text_context, drop = self.training_text_context(params, batch, drop_key)
    mask = jnp.zeros((b, f))
    if self.config.model.unet.temporal.context_frames:
      mask = self.context_mask(mask_key, b, f)
    images = {}
    if num_images:  # Their frames: alpha = 1 in every blender and no context frames.
      images['image_only_indicator'] = denoising.image_indicator(num_images, b, f)  # (b, f)
      mask = jnp.where(images['image_only_indicator'], 0.0, mask)
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, text_context, z0, mask, **images)
    loss, metrics = denoising.joint_loss(self.config, self.schedule, prediction, z0, noised,
                                         num_images)
    return loss, {'context_frames': jnp.mean(jnp.sum(mask, axis=1)),
                  'captions_dropped': jnp.mean(drop.astype(jnp.float32)), **metrics}

  def sample_window(self, params, known, mask, cond, key, options):
    """One DDIM window from token ids `cond` `(b, n)`, with text and context guidance.

    Branches as `diffusion.sampling.context_guided_sample`, the prompt's CFG
    against the empty prompt; without context frames (`unet.temporal.
    context_frames` off) only text guidance.
    """
    text = self.encode_text(params, cond)
    null = self.encode_text(params, jnp.asarray(self.null_ids(cond.shape[0])))
    model_fn = lambda x, t, context, z, m: self.apply_unet(params, x, t, context, z, m)
    return sampling.context_guided_sample(
        model_fn, known, mask, text, null, key, self.schedule,
        self.config.diffusion.prediction_type, options,
        context_branch=bool(self.config.model.unet.temporal.context_frames))

  def sample(self, params, batch, rng):
    """Each eval clip from its caption (and its first `sampling.num_context` frames)."""
    z0 = latents.batch_latents(self.autoencoder, params, batch, None)
    video = batch['video'] if 'video' in batch else self.decode(params, z0)  # Cached: decoded.
    b, f = z0.shape[:2]
    num_context = self.config.sampling.num_context
    if not self.config.model.unet.temporal.context_frames:
      num_context = 0
    mask = denoising.leading_frames_mask(jnp.full((b,), num_context), f)
    z = self.sample_window(params, z0, mask, batch['caption'], rng, self.sampling_options())
    return {'prediction': jnp.clip(self.decode(params, z), -1, 1), 'data': video}

