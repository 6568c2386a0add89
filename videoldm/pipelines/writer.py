"""Writing generated videos: streaming MP4 / GIF and a contact sheet of frames."""

import os
from typing import Iterable

from absl import logging
import imageio.v2 as imageio
import numpy as np
from PIL import Image

from videoldm import outputs


def to_uint8(frame) -> np.ndarray:
  """`[-1, 1]` float `(..., h, w, 3)` -> uint8."""
  return np.asarray(np.clip((np.asarray(frame, np.float32) + 1.0) * 127.5 + 0.5, 0, 255),
                    np.uint8)


def tile_batch(frame: np.ndarray) -> np.ndarray:
  """`(b, h, w, 3)` -> one `(h, b w, 3)` image: the batch side by side."""
  return np.concatenate(list(frame), axis=1)


def contact_sheet(frames: list[np.ndarray]) -> np.ndarray:
  """Frames `[(b, h, w, 3)] * n` -> one image, a row per video, time left to right."""
  stacked = np.stack(frames, axis=1)  # (b, n, h, w, 3)
  return np.concatenate(np.concatenate(list(stacked), axis=1), axis=1)  # (b h, n w, 3)


def output_paths(path: str, gif: bool) -> list[str]:
  """The files a `VideoWriter` at `path` writes: the MP4, the GIF, the contact sheet."""
  return [path] + ([path[:-4] + '.gif'] if gif else []) + [path[:-4] + '_frames.png']


def check_outputs(path: str, gif: bool, overwrite: bool = False) -> None:
  """Raises before any work if `path` is no .mp4 or one of its files may not be written."""
  if not path.endswith('.mp4'):
    raise ValueError(f'Output path {path!r} must end in .mp4.')
  for output in output_paths(path, gif):
    outputs.check_output(output, overwrite)


class VideoWriter:
  """Appends frames to MP4 (and optionally GIF) files as they arrive.

  Frames are `(b, h, w, 3)` in [-1, 1]; the b videos are tiled side by side.
  Every `keyframe_every`-th frame is kept for the contact sheet.
  """

  def __init__(self, path: str, fps: float, gif: bool = False, keyframe_every: int = 4,
               sheet_columns: int = 16, overwrite: bool = False):
    check_outputs(path, gif, overwrite)
    if fps <= 0:
      raise ValueError(f'fps={fps} must be positive.')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self.fps = fps
    self._mp4 = imageio.get_writer(path, fps=fps, codec='libx264', quality=8,
                                   macro_block_size=1, ffmpeg_log_level='error')
    self._gif = imageio.get_writer(path[:-4] + '.gif', mode='I', duration=1.0 / fps,
                                   loop=0) if gif else None
    self.keyframe_every = keyframe_every
    self.sheet_columns = sheet_columns
    self.sheet_frames: list[np.ndarray] = []
    self.count = 0

  def append(self, frame) -> None:
    frames = to_uint8(frame)  # (b, h, w, 3)
    image = tile_batch(frames)
    self._mp4.append_data(image)
    if self._gif is not None:
      self._gif.append_data(image)
    if self.count % self.keyframe_every == 0 and len(self.sheet_frames) < self.sheet_columns:
      self.sheet_frames.append(frames)
    self.count += 1

  def close(self) -> None:
    self._mp4.close()
    if self._gif is not None:
      self._gif.close()
    if self.sheet_frames:
      Image.fromarray(contact_sheet(self.sheet_frames)).save(self.path[:-4] + '_frames.png')
    logging.info('Wrote %d frames to %s.', self.count, self.path)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_all(frames: Iterable, path: str, fps: float, gif: bool = False,
              keyframe_every: int = 4, overwrite: bool = False) -> int:
  """Streams `frames` into `path`; returns the number of frames written."""
  with VideoWriter(path, fps, gif, keyframe_every, overwrite=overwrite) as writer:
    for frame in frames:
      writer.append(frame)
  return writer.count


def read_video(path: str) -> np.ndarray:
  """All frames of a video file as uint8 `(f, h, w, 3)` (used to check outputs)."""
  reader = imageio.get_reader(path)
  try:
    return np.stack([frame[..., :3] for frame in reader])
  finally:
    reader.close()
