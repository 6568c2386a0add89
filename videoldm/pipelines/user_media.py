"""The user's own frames as sampling context: a first frame (image-to-video) or a video to
continue.

Frames are scaled to cover the model's frame size and centre-cropped to it
(`video_io.resize_cover_crop`), then given to the prediction model as context
frames (encoded with the run's autoencoder; `VideoLDM.frames(given_frames=)`).
Key frames are `4 ** interpolation_passes` output frames apart, so a
continuation takes the video's last frame and the one that many frames before
it. Unreadable files raise one error naming the file and what was expected.
"""

import dataclasses

import numpy as np
from PIL import Image

from videoldm.data import video_io


@dataclasses.dataclass(frozen=True)
class Context:
  """Context frames for the pipeline and the frames written before its output."""
  frames: np.ndarray  # (n, H, W, 3) float32 in [-1, 1]: the given key frames, n in {1, 2}.
  prefix: np.ndarray  # (p, H, W, 3) uint8: the user's frames written first, unchanged.
  skip: int  # Leading output frames of the pipeline that the prefix already shows.


def to_unit_range(frames: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 in [-1, 1] (written back to the same uint8 values)."""
  return np.asarray(frames, np.float32) / 127.5 - 1.0


def _unreadable(kind: str, path: str, error: Exception, expected: str) -> ValueError:
  reason = (str(error).splitlines() or [''])[0]  # Not ffmpeg's whole log.
  return ValueError(f'Could not read the {kind} {path!r} ({type(error).__name__}: {reason}); '
                    f'expected {expected}.')


def first_frame(path: str, height: int, width: int) -> Context:
  """Image-to-video: the image at `path` as the first frame (after the autoencoder)."""
  try:
    with Image.open(path) as image:
      frame = video_io.to_rgb(np.asarray(image.convert('RGBA')))
  except (OSError, ValueError) as error:
    raise _unreadable('image', path, error, 'an image file (PNG, JPEG, ...)') from error
  frame = video_io.resize_cover_crop(frame, height, width)
  return Context(to_unit_range(frame[None]), np.zeros((0, height, width, 3), np.uint8), skip=0)


def continuation(path: str, height: int, width: int, key_spacing: int) -> Context:
  """Continue the video at `path`: its frames are written unchanged, then the generated
  frames after its last one, with its last two key frames (`key_spacing` apart) as context."""
  try:
    video = video_io.read_video(path)
  except (OSError, ValueError, RuntimeError, StopIteration) as error:
    raise _unreadable('video', path, error, 'a video file ffmpeg can decode') from error
  video = video_io.resize_video(video, height, width)
  if len(video) > key_spacing:  # Two key frames: the last and the one key_spacing before it.
    context, skip = video[[-1 - key_spacing, -1]], key_spacing + 1
  else:
    context, skip = video[-1:], 1
  return Context(to_unit_range(context), video, skip)
