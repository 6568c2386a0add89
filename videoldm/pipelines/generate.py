"""Generating a video file from a run: load its stages, stream frames to disk."""

import dataclasses
import time

from absl import logging
import jax.numpy as jnp
import numpy as np

from videoldm.pipelines import loading
from videoldm.pipelines import user_media
from videoldm.pipelines import video_ldm
from videoldm.pipelines import writer
from videoldm.stages import interpolation as interpolation_stage


class Progress:
  """Logs frames done, elapsed time and ETA."""

  def __init__(self, total: int, every: int = 4):
    self.total, self.every, self.start = total, every, time.time()

  def __call__(self, done: int) -> None:
    if done % self.every and done != self.total:
      return
    elapsed = time.time() - self.start
    eta = elapsed / done * (self.total - done) if done else float('nan')
    logging.info('[%s%s] %d/%d frames, %.0fs elapsed, ETA %.0fs',
                 '#' * (20 * done // self.total), '.' * (20 - 20 * done // self.total),
                 done, self.total, elapsed, eta)


def generate(run_dir: str, settings: video_ldm.Settings, out: str, fps: float,
             gif: bool = False, spatial_from: str | None = None, overwrite: bool = False,
             first_frame: str | None = None, continue_video: str | None = None) -> int:
  """Loads the run's stages, streams the video into `out`; returns the frame count.

  Text prompts need only the (text) video stage. `spatial_from` (an SD folder,
  export folder, workdir or params file) replaces the spatial params of the
  image, video and interpolation stages, keeping the trained temporal layers (Sec. 4.2.1).
  `first_frame` (an image) starts every video with it, through the run's
  autoencoder; `continue_video` (a video file) writes its frames unchanged,
  then `settings.num_frames` generated frames that continue it (`user_media.py`).
  Existing outputs are refused unless `overwrite` (checked before any loading).
  """
  if first_frame and continue_video:
    raise ValueError('Give first_frame or continue_video, not both.')
  writer.check_outputs(out, gif, overwrite)
  required = ('video',) if settings.prompts else ('image', 'video')
  models = loading.load_run(run_dir, required=required)
  if spatial_from:
    from videoldm.convert import temporal_transfer  # pylint: disable=g-import-not-at-top
    from videoldm.pipelines import exported  # pylint: disable=g-import-not-at-top
    spatial = exported.read_spatial_params(spatial_from)
    for name in ('image', 'video', 'interpolation'):  # The stages on the image backbone.
      if name in models:
        models[name] = video_ldm.Model(
            models[name].stage, temporal_transfer.transfer_temporal(models[name].params, spatial))
  context = None
  if first_frame or continue_video:
    height, width = video_ldm.frame_size(models, settings)
    spacing = interpolation_stage.UPSAMPLING ** settings.interpolation_passes
    context = (user_media.first_frame(first_frame, height, width) if first_frame else
               user_media.continuation(continue_video, height, width, spacing))
    settings = dataclasses.replace(settings, num_frames=settings.num_frames + context.skip)
  pipeline = video_ldm.VideoLDM(models, settings)
  count = len(pipeline.labels)
  given = None
  if context is not None:  # The same frames for every video.
    given = jnp.broadcast_to(jnp.asarray(context.frames), (count,) + context.frames.shape)
  progress = Progress(settings.num_frames + (len(context.prefix) - context.skip
                                             if context is not None else 0))
  with writer.VideoWriter(out, fps, gif, overwrite=overwrite) as video:
    for frame in (context.prefix if context is not None else ()):
      video.append(np.broadcast_to(user_media.to_unit_range(frame), (count,) + frame.shape))
    for index, frame in enumerate(pipeline.frames(given_frames=given)):
      if context is None or index >= context.skip:
        video.append(frame)
        progress(video.count)
  return video.count
