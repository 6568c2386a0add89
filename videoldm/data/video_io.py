"""Reading, resizing and writing video files (mp4/webm/gif/... via imageio).

Frames are uint8 RGB `(h, w, 3)`; videos `(f, h, w, 3)`. mp4/webm go through
imageio-ffmpeg (bundled ffmpeg binary, works offline); gif through Pillow.
"""

import os
from collections.abc import Iterator, Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.gif', '.avi', '.mov', '.mkv', '.m4v')


def _check_exists(path: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Video file {path!r} does not exist.')


def to_rgb(frame: np.ndarray) -> np.ndarray:
  """Returns a uint8 (h, w, 3) frame from gray, gray+alpha, RGB or RGBA input."""
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    raise ValueError(f'Frame dtype {frame.dtype} is not supported; expected '
                     'uint8.')
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'Frame shape {frame.shape} is not an image; expected '
                     '(h, w) or (h, w, 1|2|3|4).')
  if frame.shape[-1] in (1, 2):
    frame = np.repeat(frame[..., :1], 3, axis=-1)
  return np.ascontiguousarray(frame[..., :3])


def iter_frames(path: str) -> Iterator[np.ndarray]:
  """Yields the frames of a video file one by one as uint8 (h, w, 3)."""
  _check_exists(path)
  for frame in iio.imiter(path):
    yield to_rgb(frame)


def read_video(path: str) -> np.ndarray:
  """Reads a whole video file into uint8 (f, h, w, 3)."""
  return np.stack(list(iter_frames(path)))


def video_fps(path: str, default: float = 8.0) -> float:
  """Frame rate from the file's metadata (`fps`, or gif frame `duration` ms)."""
  _check_exists(path)
  meta = iio.immeta(path)
  fps = meta.get('fps')
  if fps and np.isfinite(fps) and fps > 0:
    return float(fps)
  duration_ms = meta.get('duration')
  if duration_ms and duration_ms > 0 and not path.lower().endswith(
      ('.mp4', '.webm', '.avi', '.mov', '.mkv', '.m4v')):
    return 1000.0 / float(duration_ms)
  return float(default)


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
  """Scales the shorter side to `size` (bicubic) and crops the centre square."""
  height, width = frame.shape[:2]
  if (height, width) == (size, size):
    return frame
  scale = size / min(height, width)
  new_w = max(size, round(width * scale))
  new_h = max(size, round(height * scale))
  image = Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def resize_video(video: np.ndarray, size: int) -> np.ndarray:
  """`resize_center_crop` on each frame of a uint8 (f, h, w, 3) video."""
  if video.shape[1:3] == (size, size):
    return video
  return np.stack([resize_center_crop(frame, size) for frame in video])


def write_video(path: str, frames: np.ndarray | Sequence[np.ndarray],
                fps: float) -> None:
  """Writes uint8 (f, h, w, 3) frames; the format follows the file extension."""
  frames = np.stack([to_rgb(f) for f in frames])
  extension = os.path.splitext(path)[1].lower()
  if extension not in VIDEO_EXTENSIONS:
    raise ValueError(f'Video path {path!r} has an unsupported extension; '
                     f'expected one of {VIDEO_EXTENSIONS}.')
  if extension == '.gif':
    iio.imwrite(path, frames, duration=round(1000.0 / fps), loop=0)
  else:
    iio.imwrite(path, frames, fps=fps, macro_block_size=1)
