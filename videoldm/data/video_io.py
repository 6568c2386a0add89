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
  """A uint8 (h, w, 3) frame from gray, gray+alpha, RGB or RGBA input (alpha over black)."""
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    raise ValueError(f'Frame dtype {frame.dtype} is not supported; expected '
                     'uint8.')
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'Frame shape {frame.shape} is not an image; expected '
                     '(h, w) or (h, w, 1|2|3|4).')
  color = frame[..., :1] if frame.shape[-1] in (1, 2) else frame[..., :3]
  if frame.shape[-1] in (2, 4):  # Composited over black: transparent pixels have no colour.
    alpha = frame[..., -1:].astype(np.uint32)
    color = ((color * alpha + 127) // 255).astype(np.uint8)
  return np.ascontiguousarray(np.broadcast_to(color, frame.shape[:2] + (3,)))


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


def resize_cover_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """Scales `frame` to cover (height, width) (bicubic) and crops the centre to it."""
  frame_h, frame_w = frame.shape[:2]
  if (frame_h, frame_w) == (height, width):
    return frame
  scale = max(height / frame_h, width / frame_w)
  new_w, new_h = max(width, round(frame_w * scale)), max(height, round(frame_h * scale))
  image = Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC)
  left, top = (new_w - width) // 2, (new_h - height) // 2
  return np.asarray(image.crop((left, top, left + width, top + height)))


def resize_video(video: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
  """`resize_cover_crop` on each frame of a uint8 (f, h, w, 3) video (square if no width)."""
  width = width or height
  if video.shape[1:3] == (height, width):
    return video
  return np.stack([resize_cover_crop(frame, height, width) for frame in video])


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
