"""The Stage interface: what one paper stage gives the trainer and the sampling stack.

A stage builds its models, says how to initialise the whole param tree (frozen
and trainable parts; which are trainable comes from `config.trainable`),
computes a scalar loss, renders samples for logging, and offers the sampler of
its role in the sampling stack (paper Fig. 5). GAN-style stages fold generator
and discriminator losses into one scalar with `stop_gradient`, so one
optimiser over one param tree suffices.

Training (the trainer; inside `jax.jit` on the sharded global batch, so pure):
  init_params, loss_fn, sample           every stage overrides these
  calibrate, preprocess                  optional, default: unchanged

Inference (`videoldm.pipelines`), by role (`stages.STAGES[name].role`):
  image          latent_size, encode, decode, sample_images
  video          latent_size, encode, decode, sample_window, apply_unet;
                 text stages also tokenize (`text_conditioned = True`)
  interpolation  sample_window (with a `regime`)
  decoder        decode_video
  upsampler      upsample
A method a stage's role does not need raises a TypeError naming the stage.
Samplers take their `diffusion.SamplingOptions` as an argument;
`sampling_options()` gives the ones the stage was configured with.
"""

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from videoldm.diffusion import sampling

Batch = dict[str, Any]


class Stage:
  """Base class of every stage; see the module docstring for the methods by role."""

  text_conditioned: bool = False  # Conditioned on token ids (b, n), not class labels (b,).

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def _missing(self, method: str):
    return TypeError(f'Stage {self.config.stage!r} ({type(self).__name__}) does not implement '
                     f'Stage.{method}.')

  # ------------------------------------------------------------- training
  def init_params(self, rng: jax.Array, batch: Batch) -> Any:
    """The whole float32 param tree; may load pretrained parts named by the config."""
    raise self._missing('init_params')

  def loss_fn(self, params: Any, batch: Batch, rng: jax.Array,
              step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, dict of scalar metrics); pure and jittable."""
    raise self._missing('loss_fn')

  def sample(self, params: Any, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Videos to log, each `(b, f, h, w, 3)` in [-1, 1]; jittable."""
    raise self._missing('sample')

  def calibrate(self, params: Any, batch: Batch) -> Any:
    """Optional data-dependent fix-up of fresh params (e.g. a latent scale), run once.

    Called on a fresh start after `init_from` has loaded params (never on resume);
    jittable. The default returns `params` unchanged.
    """
    del batch
    return params

  def preprocess(self, batch: Batch) -> Batch:
    """Optional jittable batch transform applied before `init_params`/`loss_fn`/`sample`."""
    return batch

  def cache_entries(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    """Per-clip arrays `videoldm.cache` stores (frozen encoders' outputs); `loss_fn` reads
    a batch of them in place of `video` (and `caption`). Latent stages only."""
    raise self._missing('cache_entries')

  # ------------------------------------------------------------ inference
  def sampling_options(self) -> sampling.SamplingOptions:
    """The sampling options of `config.sampling`."""
    return sampling.SamplingOptions.from_config(self.config.sampling)

  def latent_size(self) -> tuple[int, int]:
    """Latent (h, w) of the frames the stage was trained on."""
    raise self._missing('latent_size')

  def encode(self, params: Any, video: jax.Array) -> jax.Array:
    """Frames `(b, n, H, W, 3)` in [-1, 1] -> scaled latents `(b, n, h, w, c)` (posterior mean)."""
    raise self._missing('encode')

  def decode(self, params: Any, latents: jax.Array) -> jax.Array:
    """Scaled latents `(b, n, h, w, c)` -> frames `(b, n, H, W, 3)`, frame by frame."""
    raise self._missing('decode')

  def sample_images(self, params: Any, labels: jax.Array, latent_shape: Sequence[int],
                    key: jax.Array, options: sampling.SamplingOptions) -> jax.Array:
    """Key-frame latents `latent_shape` `(b, h, w, c)` for class `labels` `(b,)`."""
    raise self._missing('sample_images')

  def sample_window(self, params: Any, known: jax.Array, mask: jax.Array, cond: jax.Array,
                    key: jax.Array, options: sampling.SamplingOptions) -> jax.Array:
    """One window of latents `(b, f, h, w, c)`; the `mask` `(b, f)` frames are `known`.

    `cond`: class labels `(b,)`, or token ids `(b, n)` for text stages.
    """
    raise self._missing('sample_window')

  def apply_unet(self, params: Any, x: jax.Array, t: jax.Array, cond: Any, known: jax.Array,
                 mask: jax.Array) -> jax.Array:
    """The denoiser of a video stage: prediction for `x` `(b, f, h, w, c)` at timesteps `t`."""
    raise self._missing('apply_unet')

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    """Prompts -> int32 token ids `(b, n)` (text stages only)."""
    raise ValueError(f'Stage {self.config.stage!r} is not text-conditioned; it takes class '
                     'labels, not text prompts.')

  def decode_video(self, ae_params: Any, z: jax.Array, num_frames: int) -> jax.Array:
    """Unscaled latent frames `((b f), h, w, c)` -> video `(b, f, H, W, 3)` (temporal decoder)."""
    raise self._missing('decode_video')

  def upsample(self, params: Any, low_res: jax.Array, key: jax.Array,
               options: sampling.SamplingOptions) -> jax.Array:
    """Frames `(b, f, h, w, 3)` in [-1, 1] -> x`scale` frames in [-1, 1]."""
    raise self._missing('upsample')
