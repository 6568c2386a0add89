"""`moving_digits`: a TFDS video dataset of real handwritten digits in motion.

Glyphs are scikit-learn's bundled handwritten digits (`load_digits`, 1797
8x8 scans, no download), upscaled with a bicubic kernel and moved across a
black canvas at constant speed in one of 8 compass directions. With
`bounce=True` they reflect off the walls; otherwise they wrap around (leave one
side, re-enter at the other), so a digit's direction never changes.

Each example:
  video:   uint8 (num_frames, image_size, image_size, 3). With `colored=True`
           each digit is tinted with a colour from `COLORS` (named in the
           caption); otherwise digits are white.
  labels:  int64 (num_digits,), the digit classes 0..9, left to right in the
           caption.
  caption: e.g. "a red 3 moving left and a blue 7 moving up-right". Wrapping
           digits get their exact direction; bouncing ones get their axis
           ("moving horizontally", "vertically", "diagonally"), which bouncing
           preserves, so the caption is true for every sub-clip.
  fps:     float32 frame rate of the clip (`fps` of the config).

Splits `train` and `test` are deterministic: example i of a split is drawn
with `np.random.default_rng((seed, split_id, i))`, and the test split uses a
disjoint fifth of the sklearn scans (every 5th sample) as glyphs.

Custom variants: `tfds.builder('moving_digits', config='tiny', num_frames=12)`
derives a config named after the overrides (`tiny_num_frames12`), so each
variant is generated into its own folder.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

# Tint colours (name, RGB); digits are drawn as alpha * colour.
COLORS = (
    ('red', (255, 70, 70)),
    ('green', (70, 230, 70)),
    ('blue', (80, 130, 255)),
    ('yellow', (255, 225, 40)),
    ('cyan', (40, 225, 240)),
    ('magenta', (240, 70, 240)),
    ('orange', (255, 150, 40)),
    ('white', (255, 255, 255)),
)
# Compass directions in image coordinates (x right, y down) and their names.
DIRECTIONS = (
    ('right', (1, 0)), ('down-right', (1, 1)), ('down', (0, 1)),
    ('down-left', (-1, 1)), ('left', (-1, 0)), ('up-left', (-1, -1)),
    ('up', (0, -1)), ('up-right', (1, -1)),
)
DIGIT_NAMES = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')
_SPLIT_IDS = {'train': 0, 'test': 1}
_TEST_GLYPH_EVERY = 5  # Scans with index % 5 == 0 are test glyphs.


@dataclasses.dataclass(eq=False)
class MovingDigitsConfig(tfds.core.BuilderConfig):
  """Generation settings; `speed` is in pixels per frame."""
  image_size: int = 32
  num_frames: int = 16
  fps: float = 8.0
  num_digits: int = 2
  digit_scale: float = 0.45  # Glyph side as a fraction of the canvas side.
  speed: float = 1.5
  bounce: bool = True
  colored: bool = True
  num_train: int = 2000
  num_test: int = 200
  seed: int = 0


_FIELDS = ('image_size', 'num_frames', 'fps', 'num_digits', 'digit_scale',
           'speed', 'bounce', 'colored', 'num_train', 'num_test', 'seed')

BUILDER_CONFIGS = (
    MovingDigitsConfig(
        name='tiny', description='32x32, 8 frames, 64/32 examples (tests).',
        image_size=32, num_frames=8, speed=2.0, num_train=64, num_test=32),
    MovingDigitsConfig(
        name='default', description='32x32, 16 frames, 2 bouncing digits.'),
    MovingDigitsConfig(
        name='single', description='32x32, 16 frames, 1 wrapping digit.',
        num_digits=1, bounce=False),
    MovingDigitsConfig(
        name='64px', description='64x64, 16 frames, 2 bouncing digits.',
        image_size=64, speed=3.0),
)


def _validate(config: MovingDigitsConfig) -> None:
  """Raises ValueError on settings that cannot be generated."""
  if config.num_digits not in (1, 2):
    raise ValueError(f'moving_digits num_digits={config.num_digits} is not '
                     'supported; expected 1 or 2.')
  if config.image_size < 8 or config.num_frames < 1:
    raise ValueError(f'moving_digits image_size={config.image_size} and '
                     f'num_frames={config.num_frames} must be >= 8 and >= 1.')
  if not 0.1 <= config.digit_scale <= 0.9:
    raise ValueError(f'moving_digits digit_scale={config.digit_scale} is not '
                     'in [0.1, 0.9].')
  if config.num_train < 1 or config.num_test < 1:
    raise ValueError(f'moving_digits num_train={config.num_train} and '
                     f'num_test={config.num_test} must be positive.')


def derive_config(base: str | MovingDigitsConfig | None,
                  **overrides) -> MovingDigitsConfig:
  """Returns `base` (a config or its name) with `overrides`, named after them."""
  if base is None or isinstance(base, str):
    by_name = {c.name: c for c in BUILDER_CONFIGS}
    name = base or 'default'
    if name not in by_name:
      raise ValueError(f'moving_digits has no config {name!r}; expected one of '
                       f'{sorted(by_name)}.')
    base = by_name[name]
  unknown = sorted(set(overrides) - set(_FIELDS))
  if unknown:
    raise ValueError(f'moving_digits got unknown settings {unknown}; expected '
                     f'some of {list(_FIELDS)}.')
  suffix = '_'.join(f'{k}{str(v).lower()}' for k, v in sorted(overrides.items()))
  return dataclasses.replace(base, name=f'{base.name}_{suffix}', **overrides)


def _cubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of Keys bicubic weights (a=-0.5), rows summing to 1."""
  centers = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  d = np.abs(centers[:, None] - np.arange(in_size)[None, :])
  weights = np.where(
      d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1,
      np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0.0))
  return weights / weights.sum(axis=1, keepdims=True)


def load_glyphs(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns the split's glyphs, float (n, size, size) in [0, 1], and labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  is_test = np.arange(len(digits.target)) % _TEST_GLYPH_EVERY == 0
  keep = is_test if split == 'test' else ~is_test
  images = digits.images[keep] / 16.0  # (n, 8, 8)
  resize = _cubic_resize_matrix(images.shape[1], size)
  glyphs = np.einsum('ij,njk,lk->nil', resize, images, resize)
  return np.clip(glyphs, 0.0, 1.0), digits.target[keep].astype(np.int64)


def _trajectory(start: np.ndarray, velocity: np.ndarray, num_frames: int,
                extent: int, bounce: bool) -> np.ndarray:
  """Integer top-left positions (num_frames, 2) moving from `start`."""
  path = start[None] + velocity[None] * np.arange(num_frames)[:, None]
  if bounce:  # Triangle wave: reflect inside [0, extent].
    period = np.mod(path, 2 * extent)
    path = extent - np.abs(extent - period)
  return np.round(path).astype(np.int64)


def _render(glyph: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
  """Draws `glyph` at each frame's (x, y) on a wrapping canvas: (f, size, size)."""
  num_frames, glyph_size = len(positions), glyph.shape[0]
  offsets = np.arange(glyph_size)
  cols = (positions[:, 0:1] + offsets) % size  # (f, g)
  rows = (positions[:, 1:2] + offsets) % size  # (f, g)
  canvas = np.zeros((num_frames, size, size), np.float32)
  frames = np.arange(num_frames)[:, None, None]
  canvas[frames, rows[:, :, None], cols[:, None, :]] = glyph[None]
  return canvas


def make_example(config: MovingDigitsConfig, glyphs: np.ndarray,
                 glyph_labels: np.ndarray, rng: np.random.Generator) -> dict:
  """Generates one example (see module docstring) from `rng`."""
  size, glyph_size = config.image_size, glyphs.shape[1]
  extent = size - glyph_size
  video = np.zeros((config.num_frames, size, size, 3), np.float32)
  picks = rng.integers(len(glyphs), size=config.num_digits)
  color_ids = rng.permutation(len(COLORS) - 1)[:config.num_digits]
  direction_ids = rng.integers(len(DIRECTIONS), size=config.num_digits)
  speeds = config.speed * rng.uniform(0.75, 1.25, size=config.num_digits)
  starts = rng.uniform(0, extent, size=(config.num_digits, 2))
  phrases = []
  for d in range(config.num_digits):
    direction_name, unit = DIRECTIONS[direction_ids[d]]
    unit = np.asarray(unit, np.float64) / np.linalg.norm(unit)
    positions = _trajectory(starts[d], speeds[d] * unit, config.num_frames,
                            extent, config.bounce)
    alpha = _render(glyphs[picks[d]], positions, size)
    color_name, rgb = COLORS[color_ids[d]] if config.colored else COLORS[-1]
    video = np.maximum(video, alpha[..., None] * np.asarray(rgb, np.float32))
    if config.bounce:
      direction_name = ('horizontally' if unit[1] == 0 else
                        'vertically' if unit[0] == 0 else 'diagonally')
    color_word = f'{color_name} ' if config.colored else ''
    phrases.append(f'a {color_word}{DIGIT_NAMES[glyph_labels[picks[d]]]} '
                   f'moving {direction_name}')
  return {
      'video': np.round(video).astype(np.uint8),
      'labels': glyph_labels[picks],
      'caption': ' and '.join(phrases),
      'fps': np.float32(config.fps),
  }


class MovingDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits moving on a canvas; generated locally, no download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)
  DEFAULT_CONFIG_NAME = 'default'

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    """No download checksums (TFDS' lookup needs `importlib_resources`)."""
    return None

  def __init__(self, *, config=None, **kwargs):
    """Accepts `MovingDigitsConfig` fields as kwargs to derive a variant."""
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    if overrides:
      config = derive_config(config, **overrides)
    super().__init__(config=config, **kwargs)
    _validate(self.builder_config)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    video_shape = (c.num_frames, c.image_size, c.image_size, 3)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(
                shape=video_shape, dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            'labels': tfds.features.Tensor(shape=(c.num_digits,),
                                           dtype=np.int64),
            'caption': tfds.features.Text(),
            'fps': tfds.features.Scalar(dtype=np.float32),
        }),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {'train': self._generate_examples('train', c.num_train),
            'test': self._generate_examples('test', c.num_test)}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    glyph_size = max(4, round(c.digit_scale * c.image_size))
    glyphs, labels = load_glyphs(split, glyph_size)
    for i in range(num_examples):
      rng = np.random.default_rng((c.seed, _SPLIT_IDS[split], i))
      yield i, make_example(c, glyphs, labels, rng)
