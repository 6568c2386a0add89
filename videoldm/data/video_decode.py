"""Decoding video files with PyAV: probe a file, decode one clip on the fly.

`probe(path)` reads a file's header (frame rate, frame count, size) without
decoding it. `decode_clip` seeks to the key frame before a clip's first frame
and decodes only up to its last one, converting (to RGB) just the frames the
clip takes, so a worker's memory is bounded by one clip whatever the video's
length. Paths may be local or any `etils.epath` location (`gs://...`).
Frames are resized to cover (height, width) and centre-cropped
(`video_io.resize_cover_crop`), so any aspect works, 320x512 included.
"""

import contextlib
import dataclasses
import fractions

import av
from etils import epath
import numpy as np

from videoldm.data import video_io


class DecodeError(ValueError):
  """A clip that cannot be decoded (the file ends early, a corrupt packet, ...)."""


class UnreadableFile(DecodeError):
  """A file that cannot be opened as a video at all (empty, truncated, not a video, ...)."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  fps: float
  num_frames: int
  height: int
  width: int


@contextlib.contextmanager
def _open(path: str):
  """A PyAV container for a local path or an epath URL; failing to open is UnreadableFile."""
  with contextlib.ExitStack() as stack:
    try:
      if '://' in path:
        container = stack.enter_context(av.open(stack.enter_context(epath.Path(path).open('rb'))))
      else:
        container = stack.enter_context(av.open(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, IndexError) as error:
      raise UnreadableFile(f'{type(error).__name__}: {error}') from None
    yield container


def _video_stream(container, path: str):
  if not container.streams.video:
    raise UnreadableFile(f'{path!r} has no video stream.')
  stream = container.streams.video[0]
  stream.thread_type = 'AUTO'
  return stream


def _fps(stream) -> float:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  return float(rate) if rate else 0.0


def _count_frames(container, stream) -> int:
  """Frames from the header, else from the duration, else by demuxing packets."""
  if stream.frames:
    return int(stream.frames)
  fps = _fps(stream)
  if stream.duration and stream.time_base and fps:
    return int(round(float(stream.duration * stream.time_base) * fps))
  if container.duration and fps:
    return int(round(container.duration / 1e6 * fps))
  return sum(1 for packet in container.demux(stream) if packet.size)


def probe(path: str) -> VideoInfo:
  """Frame rate, frame count and size of the first video stream; DecodeError if unreadable."""
  with _open(path) as container:
    stream = _video_stream(container, path)
    try:
      info = VideoInfo(fps=_fps(stream), num_frames=_count_frames(container, stream),
                       height=stream.codec_context.height, width=stream.codec_context.width)
    except av.error.FFmpegError as error:
      raise DecodeError(f'{type(error).__name__}: {error}') from None
  if info.num_frames < 1 or info.height < 1 or info.width < 1 or info.fps <= 0:
    raise DecodeError(f'{path!r} has {info.num_frames} frames of {info.height}x{info.width} '
                      f'at {info.fps} fps; expected a non-empty video.')
  return info


def decode_clip(path: str, start: int, num_frames: int, stride: int, height: int,
                width: int) -> np.ndarray:
  """uint8 (num_frames, height, width, 3): frames start, start + stride, ... of `path`.

  Frame i is the one whose timestamp is nearest i / fps. Raises DecodeError when
  the file is unreadable or ends before the clip does.
  """
  wanted = [start + i * stride for i in range(num_frames)]
  frames = []
  with _open(path) as container:
    stream = _video_stream(container, path)
    fps, base = _fps(stream), stream.start_time or 0
    time_base = stream.time_base or fractions.Fraction(1, 1)
    try:
      if start > 0:  # The key frame at or before the clip's start; decode from there.
        container.seek(base + int(start / fps / time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        index = round(float((frame.pts - base) * time_base) * fps)
        if index < wanted[len(frames)]:
          continue
        rgb = video_io.to_rgb(frame.to_ndarray(format='rgba'))  # Gray, alpha, any format.
        frames.append(video_io.resize_cover_crop(rgb, height, width))
        if len(frames) == num_frames:
          break
    except av.error.FFmpegError as error:
      raise DecodeError(f'{type(error).__name__}: {error}') from None
  if len(frames) < num_frames:
    raise DecodeError(f'{path!r} ended after {len(frames)} of the {num_frames} frames of the '
                      f'clip starting at frame {start} (stride {stride}).')
  return np.stack(frames)
