"""Feature networks trained by the project on `moving_digits` (for FID-md / FVD-md).

No pretrained Inception or I3D can be downloaded here, so every figure this
machine produces uses two small networks trained on `moving_digits` itself and
named honestly ("FID-md", "FVD-md"):

  FrameNet  per-frame digit classifier on centred colour-free frames (softmax over the 10 digits against
            the normalised multi-hot target, so 1 or 2 digits per frame;
            circular padding and global max pooling make it shift-invariant
            on the wrapping canvas); its penultimate layer gives frame
            features (FID-md, frame-to-frame feature change) and its top-k
            digits give identity consistency and label/caption agreement.
  ClipNet   small video network (per-frame convolutions, then 3D convolutions
            over frames) trained to name the clip's digits and the first digit's
            motion word from its caption; its pooled features give FVD-md.

Training is reproducible: clips are generated with `moving_digits.make_example`
from train-split glyphs (seeded `np.random.default_rng`), parameters and batch
order come from `jax.random.key(seed)`. `load_or_train` caches the params and a
JSON record (settings, seed, steps, time, held-out accuracy on test-glyph clips)
under `<cache_dir>/<spec name>/`, so every evaluation of a run uses the same nets.
"""

import dataclasses
import hashlib
import json
import os
import re
import time

from absl import logging
import einops
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from videoldm.data import moving_digits

NUM_DIGITS = 10
NET_SIZE = 32  # Frames are resized to NET_SIZE x NET_SIZE before the nets.
MOTION_WORDS = tuple(name for name, _ in moving_digits.DIRECTIONS) + (
    'horizontally', 'vertically', 'diagonally')
_MOTION_RE = re.compile(r'moving (' + '|'.join(sorted(MOTION_WORDS, key=len, reverse=True)) + ')')


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which `moving_digits` clips the nets are trained for (mirrors `config.data`)."""
  builder_config: str = 'tiny'
  builder_kwargs: tuple = ()  # Sorted (name, value) pairs, e.g. (('num_frames', 32),).
  num_frames: int = 8
  frame_stride: int = 1

  @property
  def name(self) -> str:
    text = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return f'{self.builder_config}_{hashlib.sha1(text.encode()).hexdigest()[:10]}'

  def builder(self) -> moving_digits.MovingDigitsConfig:
    return moving_digits.derive_config(self.builder_config, **dict(self.builder_kwargs))


def spec_from_data_config(data_config) -> DataSpec:
  """The `DataSpec` of a trainer `config.data` (a `moving_digits` dataset)."""
  if data_config.name != 'moving_digits':
    raise ValueError(f'data.name={data_config.name!r}: the digit feature networks need '
                     "'moving_digits'.")
  kwargs = tuple(sorted(dict(data_config.get('builder_kwargs') or {}).items()))
  return DataSpec(data_config.builder_config or 'default', kwargs, data_config.num_frames,
                  data_config.frame_stride)


def caption_digits(caption: str) -> list[int]:
  """The digit classes a `moving_digits` caption names, in order ("a red 3 moving ..." -> [3])."""
  return [int(d) for d in re.findall(r'\b(\d) moving', caption)]


def make_clips(spec: DataSpec, split: str, num_clips: int, seed: int) -> dict:
  """`num_clips` clips of `spec` from `split` glyphs, in the trainer's [-1, 1] layout.

  Returns video float32 (n, f, h, w, 3), digits int (n, k), multi_hot float32
  (n, 10), motion int (n,) (index into MOTION_WORDS) and captions (list of str).
  """
  config = spec.builder()
  span = (spec.num_frames - 1) * spec.frame_stride + 1
  if span > config.num_frames:
    raise ValueError(f'num_frames={spec.num_frames} at frame_stride={spec.frame_stride} needs '
                     f'{span} source frames; the builder config has {config.num_frames}.')
  glyph_size = max(4, round(config.digit_scale * config.image_size))
  glyphs, glyph_labels = moving_digits.load_glyphs(split, glyph_size)
  rng = np.random.default_rng((seed, 1 if split == 'test' else 0))
  videos, digits, motion, captions = [], [], [], []
  for _ in range(num_clips):
    example = moving_digits.make_example(config, glyphs, glyph_labels, rng)
    offset = int(rng.integers(0, config.num_frames - span + 1))
    videos.append(example['video'][offset:offset + span:spec.frame_stride])
    digits.append(example['labels'])
    motion.append(MOTION_WORDS.index(_MOTION_RE.search(example['caption']).group(1)))
    captions.append(example['caption'])
  digits = np.stack(digits)
  multi_hot = np.zeros((num_clips, NUM_DIGITS), np.float32)
  np.put_along_axis(multi_hot, digits, 1.0, axis=1)
  return dict(video=np.stack(videos).astype(np.float32) / 127.5 - 1.0, digits=digits,
              multi_hot=multi_hot, motion=np.asarray(motion), captions=captions)


def to_net_size(frames: jax.Array) -> jax.Array:
  """Frames `(n, h, w, 3)` resized (linear) to `(n, NET_SIZE, NET_SIZE, 3)`."""
  if frames.shape[1:3] == (NET_SIZE, NET_SIZE):
    return frames
  return jax.image.resize(frames, (frames.shape[0], NET_SIZE, NET_SIZE, 3), 'linear')


def colour_free(frames: jax.Array) -> jax.Array:
  """`(n, 32, 32, 3)` -> `(n, 16, 16, 1)`: channel max (undoes the tint), 2x2 average pool."""
  brightness = jnp.max(frames, axis=-1, keepdims=True)
  return nn.avg_pool(brightness, (2, 2), strides=(2, 2))


def _circular_centre(weights: jax.Array) -> jax.Array:
  """Circular mean position (integer) of non-negative `weights` `(n, size)` on a ring."""
  size = weights.shape[-1]
  angles = 2 * jnp.pi * jnp.arange(size) / size
  mean = jnp.sum(weights * jnp.exp(1j * angles), axis=-1)
  return jnp.round(jnp.angle(mean) * size / (2 * jnp.pi)).astype(jnp.int32) % size


def centred(frames: jax.Array) -> jax.Array:
  """Brightness `(n, 32, 32, 1)` cyclically rolled so its circular centroid is the centre.

  A digit moved by whole pixels on the wrapping canvas (or inside a black one)
  gives the same centred frame, so a FrameNet prediction cannot change with motion.
  """
  brightness = jnp.max(frames, axis=-1) + 1.0  # (n, h, w), >= 0 on the black background.
  size = brightness.shape[-1]
  rows = _circular_centre(jnp.sum(brightness, axis=2))
  cols = _circular_centre(jnp.sum(brightness, axis=1))
  roll = lambda image, r, c: jnp.roll(image, (size // 2 - r, size // 2 - c), axis=(0, 1))
  return jax.vmap(roll)(brightness, rows, cols)[..., None] - 1.0


class FrameNet(nn.Module):
  """Digit classifier on frames `(n, 32, 32, 3)`: returns (features (n, 64), logits (n, 10))."""

  @nn.compact
  def __call__(self, frames):
    x = nn.avg_pool(centred(frames), (2, 2), strides=(2, 2))  # (n, 16, 16, 1)
    for i, (width, stride) in enumerate(((32, 1), (64, 2), (128, 2))):
      x = nn.relu(nn.Conv(width, (3, 3), strides=stride, padding='CIRCULAR',
                          name=f'conv{i}')(x))
    features = nn.relu(nn.Dense(64, name='features')(jnp.max(x, axis=(1, 2))))
    return features, nn.Dense(NUM_DIGITS, name='digits')(features)


class ClipNet(nn.Module):
  """Video network on clips `(b, f, 32, 32, 3)`: (features (b, 64), digit logits, motion logits)."""

  @nn.compact
  def __call__(self, video):
    b = video.shape[0]
    x = colour_free(einops.rearrange(video, 'b f h w c -> (b f) h w c'))  # (b f) 16 16 1
    for i, width in enumerate((16, 32)):
      x = nn.relu(nn.Conv(width, (3, 3), strides=2, padding='CIRCULAR',
                          name=f'frame_conv{i}')(x))
    x = einops.rearrange(x, '(b f) h w c -> b f h w c', b=b)  # b f 4 4 c
    for i in range(2):
      x = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode='wrap')  # b f 6 6 c
      x = nn.relu(nn.Conv(48, (3, 3, 3), padding=((1, 1), (0, 0), (0, 0)),
                          name=f'temporal_conv{i}')(x))
    features = nn.relu(nn.Dense(64, name='features')(jnp.mean(x, axis=(1, 2, 3))))
    return (features, nn.Dense(NUM_DIGITS, name='digits')(features),
            nn.Dense(len(MOTION_WORDS), name='motion')(features))


@dataclasses.dataclass
class FeatureNetworks:
  """The two trained nets and their record; all methods take videos `(b, f, h, w, 3)` in [-1, 1]."""
  frame_params: dict
  clip_params: dict
  num_digits: int
  record: dict

  def __post_init__(self):
    frame_net, clip_net = FrameNet(), ClipNet()
    self._frame = jax.jit(lambda p, x: frame_net.apply({'params': p}, to_net_size(x)))
    self._clip = jax.jit(lambda p, v: clip_net.apply({'params': p}, v))

  def _frame_outputs(self, videos, batch_size: int = 256):
    videos = np.asarray(videos, np.float32)
    frames = einops.rearrange(videos, 'b f h w c -> (b f) h w c')  # (b f) h w c
    features, logits = [], []
    for start in range(0, len(frames), batch_size):
      f, l = jax.device_get(self._frame(self.frame_params, frames[start:start + batch_size]))
      features.append(f)
      logits.append(l)
    split = lambda x: einops.rearrange(np.concatenate(x), '(b f) d -> b f d', b=len(videos))
    return split(features), split(logits)

  def frame_features(self, videos) -> np.ndarray:
    """Penultimate FrameNet features `(b, f, 64)`."""
    return self._frame_outputs(videos)[0]

  def frame_probs(self, videos) -> np.ndarray:
    """Per-frame digit probabilities `(b, f, 10)` (softmax; k digits share the mass)."""
    return np.asarray(jax.nn.softmax(self._frame_outputs(videos)[1]))

  def clip_features(self, videos, batch_size: int = 64) -> np.ndarray:
    """Pooled ClipNet features `(b, 64)`."""
    videos = np.asarray(videos, np.float32)
    out = []
    for start in range(0, len(videos), batch_size):
      chunk = videos[start:start + batch_size]
      b, f = chunk.shape[:2]
      chunk = to_net_size(jnp.asarray(einops.rearrange(chunk, 'b f h w c -> (b f) h w c')))
      chunk = einops.rearrange(chunk, '(b f) h w c -> b f h w c', b=b, f=f)  # b f 32 32 3
      out.append(jax.device_get(self._clip(self.clip_params, chunk)[0]))
    return np.concatenate(out)


def _train(net: nn.Module, loss_of_outputs, example, data: dict, key: jax.Array, steps: int,
           batch_size: int, lr: float):
  """Adam on `loss_of_outputs(net outputs, batch)` over random batches of `data`."""
  init_key, key = jax.random.split(key)
  params = net.init(init_key, example)['params']
  tx = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(
        lambda p: loss_of_outputs(net.apply({'params': p}, batch['x']), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  n, loss = len(data['x']), float('nan')
  for i in range(steps):
    index = np.asarray(jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n))
    params, opt_state, loss = step(params, opt_state, {k: v[index] for k, v in data.items()})
  logging.info('Trained %s for %d steps; last loss %.4f.', type(net).__name__, steps, loss)
  return params


def top_k_digits(probs: np.ndarray, k: int) -> np.ndarray:
  """The `k` most probable digits per frame, sorted: `(..., 10) -> (..., k)`."""
  return np.sort(np.argsort(-probs, axis=-1)[..., :k], axis=-1)


def train_feature_networks(spec: DataSpec, seed: int = 0, num_clips: int = 1500,
                           frame_steps: int = 600, clip_steps: int = 600) -> FeatureNetworks:
  """Trains FrameNet and ClipNet on clips of `spec` (train glyphs); records held-out accuracy."""
  start = time.time()
  clips = make_clips(spec, 'train', num_clips, seed)
  video = clips['video']
  if video.shape[2:4] != (NET_SIZE, NET_SIZE):
    raise ValueError(f'The digit nets train on {NET_SIZE}x{NET_SIZE} clips; builder config '
                     f'{spec.builder_config!r} makes {video.shape[2:4]}.')
  frames = dict(x=einops.rearrange(video, 'b f h w c -> (b f) h w c'),  # (b f) h w c
                y=np.repeat(clips['multi_hot'], video.shape[1], axis=0))
  # Softmax over digits against the normalised multi-hot target (0.5 / 0.5 for two digits).
  bce = lambda logits, y: jnp.mean(optax.softmax_cross_entropy(
      logits, y / y.sum(-1, keepdims=True)))
  key = jax.random.key(seed)
  frame_params = _train(FrameNet(), lambda out, b: bce(out[1], b['y']), frames['x'][:2], frames,
                        jax.random.fold_in(key, 0), frame_steps, 64, 3e-3)
  clip_data = dict(x=video, y=clips['multi_hot'], motion=clips['motion'])
  clip_loss = lambda out, b: bce(out[1], b['y']) + jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(out[2], b['motion']))
  clip_params = _train(ClipNet(), clip_loss, video[:2], clip_data, jax.random.fold_in(key, 1),
                       clip_steps, 32, 3e-3)
  num_digits = spec.builder().num_digits
  record = dict(spec=dataclasses.asdict(spec), seed=seed, num_clips=num_clips,
                frame_steps=frame_steps, clip_steps=clip_steps)
  nets = FeatureNetworks(frame_params, clip_params, num_digits, record)
  held_out = make_clips(spec, 'test', 200, seed)
  predicted = top_k_digits(nets.frame_probs(held_out['video']), num_digits)
  truth = np.sort(held_out['digits'], axis=1)[:, None, :]
  record['frame_digit_accuracy'] = float(np.mean(np.all(predicted == truth, axis=-1)))
  clip_net = ClipNet()
  _, _, motion_logits = clip_net.apply({'params': clip_params}, held_out['video'])
  record['clip_motion_accuracy'] = float(np.mean(np.argmax(motion_logits, -1) ==
                                                 held_out['motion']))
  record['train_seconds'] = round(time.time() - start, 1)
  logging.info('Digit feature networks: %s', record)
  return nets


def save(nets: FeatureNetworks, directory: str) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'params.msgpack'), 'wb') as file:
    file.write(flax.serialization.msgpack_serialize(
        dict(frame=jax.device_get(nets.frame_params), clip=jax.device_get(nets.clip_params))))
  with open(os.path.join(directory, 'record.json'), 'w') as file:
    json.dump(dict(nets.record, num_digits=nets.num_digits), file, indent=1)


def load(directory: str) -> FeatureNetworks:
  """Nets saved by `save` in `directory`."""
  params_path = os.path.join(directory, 'params.msgpack')
  if not os.path.isfile(params_path):
    raise FileNotFoundError(f'No digit feature networks in {directory!r} ({params_path!r} '
                            'is missing).')
  with open(params_path, 'rb') as file:
    params = flax.serialization.msgpack_restore(file.read())
  with open(os.path.join(directory, 'record.json')) as file:
    record = json.load(file)
  return FeatureNetworks(params['frame'], params['clip'], record.pop('num_digits'), record)


def load_or_train(spec: DataSpec, cache_dir: str, seed: int = 0, **train_kwargs
                  ) -> FeatureNetworks:
  """Cached nets for (`spec`, `seed`) under `cache_dir`, training them on first use."""
  directory = os.path.join(cache_dir, f'{spec.name}_seed{seed}')
  if os.path.isfile(os.path.join(directory, 'params.msgpack')):
    return load(directory)
  nets = train_feature_networks(spec, seed=seed, **train_kwargs)
  save(nets, directory)
  return nets
