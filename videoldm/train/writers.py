"""Metric writers and sample-video output for the trainer (process 0 writes)."""

import os
from typing import Any

from absl import logging
from clu import metric_writers
import einops
import imageio.v2 as imageio
import jax
import numpy as np


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events + log lines on process 0; log lines only elsewhere."""
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def to_uint8(video: Any) -> np.ndarray:
  """Values in [-1, 1] -> uint8 in [0, 255] (clipped)."""
  video = np.asarray(video, dtype=np.float32)
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def frame_strip(video: Any) -> np.ndarray:
  """Video batch `(b, f, h, w, c)` -> one image `(b*h, f*w, c)`: a row of frames per video."""
  video = np.asarray(video)
  if video.ndim != 5:
    raise ValueError(f'Sample video must have shape (b, f, h, w, c), got {video.shape}.')
  return einops.rearrange(video, 'b f h w c -> (b h) (f w) c')  # (b*h, f*w, c)


def gif_frames(video: Any) -> np.ndarray:
  """Video batch `(b, f, h, w, c)` -> GIF frames `(f, h, b*w, c)`: videos side by side."""
  return einops.rearrange(np.asarray(video), 'b f h w c -> f h (b w) c')  # (f, h, b*w, c)


def write_samples(workdir: str, writer: metric_writers.MetricWriter, step: int,
                  samples: dict[str, Any], fps: int = 4) -> list[str]:
  """Writes each sample video as `samples/<name>_<step>.gif` and a frame strip to TensorBoard.

  Returns the GIF paths; does nothing on processes other than 0.
  """
  if jax.process_index() != 0:
    return []
  directory = os.path.join(workdir, 'samples')
  os.makedirs(directory, exist_ok=True)
  paths, strips = [], {}
  for name, video in samples.items():
    video = to_uint8(video)
    path = os.path.join(directory, f'{name}_{step:08d}.gif')
    imageio.mimsave(path, list(gif_frames(video)), duration=1000 / fps, loop=0)
    paths.append(path)
    strips[f'samples/{name}'] = frame_strip(video)[None]  # (1, b*h, f*w, c)
  writer.write_images(step, strips)
  logging.info('Wrote samples at step %d: %s', step, paths)
  return paths
