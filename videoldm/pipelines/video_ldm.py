"""The Video LDM sampling stack (paper Fig. 5), streaming frame by frame.

  key frames   first frame from the image LDM (or given), then the prediction
               model with 1 context frame, then repeatedly with 2 (Sec. 3.2);
               every window is one DDIM scan with context guidance (Eq. 4)
               and classifier-free label guidance in one batched model call
  interpolate  T -> 4T between key frames, once or twice (Sec. 3.3)
  decode       the temporal decoder over overlapping chunks of frames
  upsample     the x4 video upsampler over windows of frames (Sec. 3.4)

Each step is a generator over frames `(b, ...)` that holds only a window, so
memory stays flat as the requested length grows; each step's compiled
function sees one fixed shape and is reused for every window. Where the
videos divide evenly over the devices (one per core on a CPU:
`videoldm.host_devices`), every step runs data-parallel over them.
"""

import dataclasses
import itertools
import math
from typing import Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from videoldm import stages
from videoldm.diffusion import sampling
from videoldm.pipelines import streams
from videoldm.stages import denoising
from videoldm.stages import interpolation as interpolation_stage
from videoldm.stages import latents as latents_lib


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to generate; None means the value the stage was trained with."""
  num_frames: int
  labels: tuple[int, ...] = (0,)
  seed: int = 0
  guidance_scale: float | None = None  # Classifier-free guidance (labels or text).
  context_guidance: float | None = None  # Context guidance (Eq. 4).
  num_steps: int | None = None  # DDIM steps per window.
  eta: float | None = None
  interpolation_passes: int = 1
  upsample: bool = False
  window_frames: int | None = None  # Frames per prediction window (> trained: Sec. 4.2).
  latent_size: tuple[int, int] | None = None  # Latent (h, w) (> trained: Sec. 4.2).
  decode_chunk: int = 8
  decode_overlap: int = 2
  upsample_window: int = 8
  interpolation_batch: int = 4  # Key-frame windows interpolated per compiled call.
  prompts: tuple[str, ...] = ()  # Text prompts (text stages), one video each; replaces labels.


@dataclasses.dataclass
class Model:
  """A trained stage: its `Stage` object (modules, schedule, config) and inference params."""
  stage: object
  params: object


def sampling_options(stage: stages.Stage, settings: Settings) -> sampling.SamplingOptions:
  """The stage's configured sampling options with the overrides of `settings`."""
  return stage.sampling_options().replace(
      num_steps=settings.num_steps, eta=settings.eta, guidance_scale=settings.guidance_scale,
      context_guidance=settings.context_guidance)


def num_key_frames(settings: Settings) -> int:
  factor = interpolation_stage.UPSAMPLING ** settings.interpolation_passes
  return math.ceil((settings.num_frames - 1) / factor) + 1


def frame_size(models: dict, settings: Settings) -> tuple[int, int]:
  """(H, W) of the key frames: the image stage's (the video stage's in text mode)."""
  stage = models['video' if settings.prompts else 'image'].stage
  h, w = settings.latent_size or stage.latent_size()
  factor = stage.autoencoder.config.downsampling_factor
  return h * factor, w * factor


def batch_mesh(batch: int, devices=None) -> jax.sharding.Mesh | None:
  """A 1-D 'batch' mesh over `devices` (default: this process's) if they divide `batch`."""
  if devices is None:
    devices = jax.local_devices() if jax.process_count() == 1 else jax.local_devices()[:1]
  if len(devices) < 2 or batch % len(devices):
    return None
  return jax.sharding.Mesh(np.asarray(devices), ('batch',))


class VideoLDM:
  """Generates videos from trained stages: `frames()` yields `(b, H, W, 3)` in [-1, 1].

  `devices`: where the videos are spread (default: all of this process's devices,
  when they divide the number of videos; else the default device alone).
  """

  def __init__(self, models: dict[str, Model], settings: Settings, devices=None):
    # Text mode: the text video stage samples the first window itself and its
    # autoencoder stands in for the image stage's.
    self.text_mode = bool(settings.prompts)
    if 'video' in models and self.text_mode != models['video'].stage.text_conditioned:
      raise ValueError(f'The video stage {models["video"].stage.config.stage!r} is '
                       f'{"not " if self.text_mode else ""}text-conditioned; expected '
                       f'{"labels, not text prompts" if self.text_mode else "text prompts"}.')
    if self.text_mode and 'video' in models:
      models = {'image': models['video'], **models}
    for name in ('image', 'video'):
      if name not in models:
        raise ValueError(f'The pipeline needs the {name!r} stage; got {sorted(models)}.')
    if settings.interpolation_passes and 'interpolation' not in models:
      raise ValueError(f'interpolation_passes={settings.interpolation_passes} needs the '
                       "'interpolation' stage.")
    if settings.upsample and 'upsampler' not in models:
      raise ValueError("upsample=True needs the 'upsampler' stage.")
    if settings.num_frames < 1:
      raise ValueError(f'num_frames={settings.num_frames} must be >= 1.')
    if settings.interpolation_passes not in (0, 1, 2):
      raise ValueError(f'interpolation_passes={settings.interpolation_passes} must be 0, 1 or 2.')
    self.models = dict(models)
    self.options = {name: sampling_options(model.stage, settings)
                    for name, model in models.items()}
    self.settings = settings
    self.labels = jnp.asarray(settings.labels, jnp.int32)
    if self.text_mode:  # Token ids (b, n) stand in for the labels.
      self.labels = jnp.asarray(models['video'].stage.tokenize(settings.prompts), jnp.int32)
    self.mesh = batch_mesh(self.labels.shape[0], devices)
    if self.mesh is not None:  # Params on every device, videos split across them.
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      self.models = {name: Model(model.stage, jax.device_put(model.params, replicated))
                     for name, model in self.models.items()}
      self.labels = self.shard(self.labels)
    video_config = models['video'].stage.config
    self.window = settings.window_frames or video_config.data.num_frames
    if self.window < 3:
      raise ValueError(f'window_frames={self.window} must be >= 3 (2 context frames + 1 new).')
    self._compiled = {}

  # ------------------------------------------------------------- key frames
  def latent_shape(self) -> tuple[int, ...]:
    """Key-frame latents `(b, h, w, c)`: the trained size unless `settings.latent_size`."""
    stage = self.models['image'].stage
    h, w = self.settings.latent_size or stage.latent_size()
    return (self.labels.shape[0], h, w, stage.autoencoder.config.latent_channels)

  def _image_fn(self):
    stage, options = self.models['image'].stage, self.options['image']
    return jax.jit(lambda params, labels, key: stage.sample_images(
        params, labels, self.latent_shape(), key, options))

  def _predict_fn(self):
    stage, options = self.models['video'].stage, self.options['video']
    return jax.jit(lambda params, known, mask, cond, key: stage.sample_window(
        params, known, mask, cond, key, options))

  def shard(self, batch: jax.Array) -> jax.Array:
    """`batch` `(n b, ...)` split over the mesh's devices along its first axis."""
    if self.mesh is None:
      return batch
    spec = jax.sharding.PartitionSpec('batch')
    return jax.device_put(batch, jax.sharding.NamedSharding(self.mesh, spec))

  def compiled(self, name: str):
    """The jitted function of one step, built once and reused for every window."""
    if name not in self._compiled:
      self._compiled[name] = getattr(self, f'_{name}_fn')()
    return self._compiled[name]

  def key_frame_latents(self, key: jax.Array, given_latents=None) -> Iterator[jax.Array]:
    """Yields key-frame latents `(b, h, w, c)`, endlessly.

    The first window's context is the image model's sample, or `given_latents`
    `(b, n, h, w, c)` (n = 1 or 2 frames the user gave), which are yielded
    unchanged; later windows continue from the last 2 key frames.
    """
    image_params = self.models['image'].params
    video_params = self.models['video'].params
    image_key, key = jax.random.split(key)
    if given_latents is None and self.text_mode:  # The first window is plain text-to-video.
      given_latents = jnp.zeros((self.labels.shape[0], 0) + self.latent_shape()[1:])
    elif given_latents is None:
      given_latents = self.compiled('image')(image_params, self.labels, image_key)[:, None]
    b, num_context = given_latents.shape[:2]
    if num_context not in ((0, 1, 2) if self.text_mode else (1, 2)):
      raise ValueError(f'Given {num_context} context frames; expected 1 or 2.')
    context = jnp.zeros((b, self.window) + given_latents.shape[2:])
    context = context.at[:, :num_context].set(given_latents)
    for window in itertools.count():
      mask = denoising.leading_frames_mask(jnp.full((b,), num_context), self.window)
      logging.info('Key-frame window %d (%d context frames).', window, num_context)
      z = self.compiled('predict')(video_params, self.shard(context), mask, self.labels,
                                   jax.random.fold_in(key, window))
      for i in range(0 if window == 0 else num_context, self.window):
        yield z[:, i]
      context = jnp.zeros_like(context).at[:, :2].set(z[:, -2:])
      num_context = 2

  def encode(self, frames: jax.Array) -> jax.Array:
    """Given frames `(b, n, H, W, 3)` in [-1, 1] -> latents `(b, n, h, w, c)` (posterior mean)."""
    image = self.models['image']
    return image.stage.encode(image.params, self.shard(frames))

  # ---------------------------------------------------------- interpolation
  def _interpolate_fn(self):
    stage, options = self.models['interpolation'].stage, self.options['interpolation']

    def interpolate(params, windows, labels, regime, key):
      mask = jnp.broadcast_to(interpolation_stage.key_frame_mask(self.key_frames_per_window),
                              windows.shape[:2])
      return stage.sample_window(params, windows, mask, labels, key, options, regime=regime)
    return jax.jit(interpolate)

  @property
  def key_frames_per_window(self) -> int:
    return self.models['interpolation'].stage.config.model.interpolation.num_key_frames

  def interpolate(self, keys: Iterator[jax.Array], num_keys: int, regime: int,
                  key: jax.Array) -> Iterator[jax.Array]:
    """T -> 4T: yields the key frames (exactly) with 3 generated frames between each pair."""
    k = self.key_frames_per_window
    step = interpolation_stage.UPSAMPLING
    per_call = self.settings.interpolation_batch
    params = self.models['interpolation'].params
    buffer, done, call = [], 0, 0
    pending_windows = []
    for frame in itertools.islice(keys, num_keys):
      buffer.append(frame)
      if len(buffer) == k:
        pending_windows.append(buffer)
        buffer = buffer[-1:]
      if len(pending_windows) == per_call:
        yield from self._interpolate_windows(pending_windows, params, regime, key, call, done == 0)
        done += len(pending_windows)
        pending_windows, call = [], call + 1
    if len(buffer) > 1:  # A last, partial window: pad with its last key frame.
      real = len(buffer)
      pending_windows.append(buffer + [buffer[-1]] * (k - real))
      tail = (real - 1) * step + 1
    else:
      tail = None
    if pending_windows:
      yield from self._interpolate_windows(pending_windows, params, regime, key, call, done == 0,
                                           last_window_frames=tail)
    elif done == 0 and buffer:
      yield buffer[0]  # A single key frame: nothing to interpolate.

  def _interpolate_windows(self, windows, params, regime, key, call, first, last_window_frames=None):
    k = self.key_frames_per_window
    step = interpolation_stage.UPSAMPLING
    per_call = self.settings.interpolation_batch
    b = windows[0][0].shape[0]
    count = len(windows)
    windows = windows + [windows[-1]] * (per_call - count)
    stacked = []
    for keys in windows:  # Key frames at every 4th position, zeros between.
      frames = []
      for i, frame in enumerate(keys):
        frames.append(frame)
        if i < k - 1:
          frames.extend([jnp.zeros_like(frame)] * (step - 1))
      stacked.append(jnp.stack(frames, axis=1))  # (b, 4 (k-1) + 1, h, w, c)
    batch = self.shard(jnp.concatenate(stacked, axis=0))  # (per_call b, L, h, w, c)
    labels = self.shard(jnp.concatenate([self.labels] * per_call, axis=0))  # Ids: (b, n).
    regimes = self.shard(jnp.full((per_call * b,), regime, jnp.int32))
    out = self.compiled('interpolate')(params, batch, labels, regimes,
                                       jax.random.fold_in(key, call))
    for w in range(count):
      frames = out[w * b:(w + 1) * b]
      start = 0 if (first and w == 0) else 1
      stop = frames.shape[1]
      if last_window_frames is not None and w == count - 1:
        stop = last_window_frames
      for i in range(start, stop):
        yield frames[:, i]

  # ------------------------------------------------------ decode / upsample
  def _decode_fn(self):
    image_stage = self.models['image'].stage
    decoder = self.models.get('decoder')

    def decode(params, latent_scale, z):  # z: (b, n, h, w, c) scaled latents.
      if decoder is None:
        ae_params = dict(autoencoder=params['autoencoder'], latent_scale=latent_scale)
        return latents_lib.decode_latents(image_stage.autoencoder, ae_params, z)
      return decoder.stage.decode_video(params['autoencoder'],
                                        latents_lib.frames_of(z / latent_scale), z.shape[1])
    return jax.jit(decode)

  def decode(self, latents: Iterator[jax.Array]) -> Iterator[jax.Array]:
    """Latents -> frames: the temporal decoder over overlapping chunks, else frame-wise."""
    image_params = self.models['image'].params
    model = self.models.get('decoder') or self.models['image']
    overlap = self.settings.decode_overlap if 'decoder' in self.models else 0
    fn = lambda z: self.compiled('decode')(model.params, image_params['latent_scale'],
                                           self.shard(z))
    return streams.chunked_overlap(latents, self.settings.decode_chunk, overlap, fn)

  def _upsample_fn(self):
    stage, options = self.models['upsampler'].stage, self.options['upsampler']
    if stage.text_conditioned:  # The upsampler's own tokenizer and text encoder.
      return jax.jit(lambda params, frames, key, ids: stage.upsample(params, frames, key,
                                                                     options, ids))
    return jax.jit(lambda params, frames, key, ids: stage.upsample(params, frames, key, options))

  def upsample(self, frames: Iterator[jax.Array], key: jax.Array) -> Iterator[jax.Array]:
    """x4 over windows of `settings.upsample_window` frames (with the prompts in text mode)."""
    model = self.models['upsampler']
    ids = None
    if model.stage.text_conditioned:
      if not self.text_mode:
        raise ValueError(f'The upsampler stage {model.stage.config.stage!r} is text-conditioned; '
                         'expected text prompts, not labels.')
      ids = self.shard(jnp.asarray(model.stage.tokenize(self.settings.prompts), jnp.int32))
    counter = itertools.count()
    fn = lambda x: self.compiled('upsample')(model.params, self.shard(jnp.clip(x, -1, 1)),
                                             jax.random.fold_in(key, next(counter)), ids)
    return streams.chunked(frames, self.settings.upsample_window, fn)

  # ------------------------------------------------------------------ all
  def latents(self, key: jax.Array, given_latents=None) -> Iterator[jax.Array]:
    """Dense latents after interpolation, exactly as many as the final video needs."""
    s = self.settings
    key_key, interp_key = jax.random.split(key)
    n_keys = num_key_frames(s)
    stream = itertools.islice(self.key_frame_latents(key_key, given_latents), n_keys)
    count = n_keys
    regimes = (0, 1)[2 - s.interpolation_passes:] if s.interpolation_passes else ()
    for index, regime in enumerate(regimes):
      stream = self.interpolate(stream, count, regime, jax.random.fold_in(interp_key, index))
      count = (count - 1) * interpolation_stage.UPSAMPLING + 1
    return itertools.islice(stream, s.num_frames)

  def frames(self, given_frames=None) -> Iterator[jax.Array]:
    """Final frames `(b, H, W, 3)` in [-1, 1], streamed in order.

    `given_frames` `(b, n, H, W, 3)`, n in {1, 2}: the video starts with them.
    """
    key = jax.random.key(self.settings.seed)
    latent_key, upsample_key = jax.random.split(key)
    given_latents = None if given_frames is None else self.encode(given_frames)
    frames = self.decode(self.latents(latent_key, given_latents))
    if self.settings.upsample:
      frames = self.upsample(frames, upsample_key)
    for frame in frames:
      yield jnp.clip(frame, -1.0, 1.0)
