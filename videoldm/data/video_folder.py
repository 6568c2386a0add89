"""`video_folder`: a TFDS dataset made from a folder of your own videos.

Every video file under the folder (recursively; extensions in
`video_io.VIDEO_EXTENSIONS`) is resized (shorter side to `image_size`,
bicubic) and centre-cropped to a square, then cut into clips of `num_frames`
consecutive frames starting every `clip_stride` frames (default: `num_frames`,
non-overlapping); a tail shorter than a clip is dropped. All clips form the
`train` split, ordered by file path and start frame.

Captions (optional) come from `captions_file`, or else the first of
`captions.json`, `captions.tsv`, `captions.txt` found in the folder:
  .json: {"clip.mp4": "a dog running", ...}
  .tsv/.txt: one `filename<TAB>caption` per line.
Keys may be the path relative to the folder, the file name, or its stem.
Videos without a caption get "".

Each example: video uint8 (num_frames, image_size, image_size, 3), caption
text, fps float32 (from the file, `default_fps` if it has none), filename
text (relative path), start_frame int32.

The folder is `video_dir=` (a builder kwarg) or TFDS' `manual_dir`. Passing
`video_dir` derives a config whose name carries the clip settings and a digest
of the folder listing, so a changed folder is generated anew:
`tfds.builder('video_folder', video_dir='/my/videos', image_size=64)`.
"""

import dataclasses
import hashlib
import json
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from videoldm.data import video_io

CAPTION_FILES = ('captions.json', 'captions.tsv', 'captions.txt')


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Ingestion settings; `clip_stride=0` means `num_frames` (no overlap)."""
  video_dir: str = ''
  captions_file: str = ''
  image_size: int = 64
  num_frames: int = 16
  clip_stride: int = 0
  default_fps: float = 8.0


_FIELDS = ('captions_file', 'image_size', 'num_frames', 'clip_stride',
           'default_fps')


def list_videos(video_dir: str) -> list[str]:
  """Sorted relative paths of the video files under `video_dir`."""
  if not os.path.isdir(video_dir):
    raise FileNotFoundError(f'Video folder {video_dir!r} does not exist.')
  paths = []
  for root, _, files in os.walk(video_dir):
    for name in files:
      if name.lower().endswith(video_io.VIDEO_EXTENSIONS):
        paths.append(os.path.relpath(os.path.join(root, name), video_dir))
  if not paths:
    raise ValueError(f'Video folder {video_dir!r} holds no video files; '
                     f'expected files ending in {video_io.VIDEO_EXTENSIONS}.')
  return sorted(p.replace(os.sep, '/') for p in paths)


def _caption_path(video_dir: str, captions_file: str) -> str | None:
  if captions_file:
    path = os.path.join(video_dir, captions_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'Captions file {path!r} does not exist.')
    return path
  for name in CAPTION_FILES:
    if os.path.isfile(os.path.join(video_dir, name)):
      return os.path.join(video_dir, name)
  return None


def load_captions(video_dir: str, captions_file: str = '') -> dict[str, str]:
  """Reads the captions mapping (see module docstring); {} when there is none."""
  path = _caption_path(video_dir, captions_file)
  if path is None:
    return {}
  with open(path, encoding='utf-8') as f:
    if path.endswith('.json'):
      captions = json.load(f)
      if not isinstance(captions, dict):
        raise ValueError(f'Captions file {path!r} holds a '
                         f'{type(captions).__name__}; expected a JSON object '
                         'mapping filename to caption.')
      return {str(k): str(v) for k, v in captions.items()}
    captions = {}
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      name, tab, caption = line.rstrip('\n').partition('\t')
      if not tab:
        raise ValueError(f'Line {line_number} of captions file {path!r} has '
                         'no tab; expected "filename<TAB>caption".')
      captions[name.strip()] = caption.strip()
    return captions


def caption_for(captions: dict[str, str], relative_path: str) -> str:
  """Looks `relative_path` up by path, file name, then stem."""
  name = os.path.basename(relative_path)
  for key in (relative_path, name, os.path.splitext(name)[0]):
    if key in captions:
      return captions[key]
  return ''


def cut_clips(frames, num_frames: int, clip_stride: int, transform):
  """Yields (start, clip) from a frame iterator; `transform` maps each frame."""
  buffer, next_start = [], 0
  for index, frame in enumerate(frames):
    if index < next_start:
      continue
    buffer.append(transform(frame))
    if len(buffer) == num_frames:
      yield next_start, np.stack(buffer)
      next_start += clip_stride
      buffer = buffer[clip_stride:]


def folder_digest(video_dir: str, captions_file: str = '') -> str:
  """8 hex digits identifying the folder path, its video listing and captions."""
  digest = hashlib.sha1(os.path.abspath(video_dir).encode())
  for path in list_videos(video_dir):
    size = os.path.getsize(os.path.join(video_dir, path))
    digest.update(f'{path}:{size};'.encode())
  digest.update(json.dumps(load_captions(video_dir, captions_file),
                           sort_keys=True).encode())
  return digest.hexdigest()[:8]


def derive_config(video_dir: str, **settings) -> VideoFolderConfig:
  """A config for `video_dir` named `{size}px_{frames}f_s{stride}_{digest}`."""
  unknown = sorted(set(settings) - set(_FIELDS))
  if unknown:
    raise ValueError(f'video_folder got unknown settings {unknown}; expected '
                     f'some of {list(_FIELDS)}.')
  config = VideoFolderConfig(name='tmp', video_dir=video_dir, **settings)
  digest = folder_digest(video_dir, config.captions_file)
  name = (f'{config.image_size}px_{config.num_frames}f_'
          f's{config.clip_stride or config.num_frames}_{digest}')
  return dataclasses.replace(config, name=name)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Clips cut from a local folder of video files, with optional captions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [VideoFolderConfig(
      name='default', description='64x64 clips of 16 frames from manual_dir.')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put video files (mp4/webm/gif/...) and optionally captions.json in '
      'manual_dir, or pass video_dir= to the builder.')

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    """No download checksums (TFDS' lookup needs `importlib_resources`)."""
    return None

  def __init__(self, *, video_dir: str | None = None, config=None, **kwargs):
    """`video_dir` and `VideoFolderConfig` fields as kwargs derive a config."""
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
    if video_dir:
      config = derive_config(os.fspath(video_dir), **settings)
    elif settings:
      raise ValueError(f'video_folder settings {sorted(settings)} need '
                       'video_dir= as well.')
    super().__init__(config=config, **kwargs)
    c = self.builder_config
    if c.image_size < 1 or c.num_frames < 1 or c.clip_stride < 0:
      raise ValueError(
          f'video_folder image_size={c.image_size}, num_frames={c.num_frames}, '
          f'clip_stride={c.clip_stride} are invalid; expected positive sizes '
          'and a stride >= 0.')

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(
                shape=(c.num_frames, c.image_size, c.image_size, 3),
                dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
            'caption': tfds.features.Text(),
            'fps': tfds.features.Scalar(dtype=np.float32),
            'filename': tfds.features.Text(),
            'start_frame': tfds.features.Scalar(dtype=np.int32),
        }),
    )

  def _split_generators(self, dl_manager):
    video_dir = self.builder_config.video_dir or os.fspath(dl_manager.manual_dir)
    return {'train': self._generate_examples(video_dir)}

  def _generate_examples(self, video_dir: str):
    c = self.builder_config
    captions = load_captions(video_dir, c.captions_file)
    stride = c.clip_stride or c.num_frames
    resize = lambda frame: video_io.resize_center_crop(frame, c.image_size)
    for relative_path in list_videos(video_dir):
      path = os.path.join(video_dir, relative_path)
      fps = video_io.video_fps(path, c.default_fps)
      caption = caption_for(captions, relative_path)
      count = 0
      for start, clip in cut_clips(video_io.iter_frames(path), c.num_frames,
                                   stride, resize):
        count += 1
        yield f'{relative_path}#{start:08d}', {
            'video': clip, 'caption': caption, 'fps': np.float32(fps),
            'filename': relative_path, 'start_frame': np.int32(start)}
      if not count:
        logging.warning('Video %s is shorter than %d frames; no clips.', path,
                        c.num_frames)
