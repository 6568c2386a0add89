"""Generating a video file from a run: load its stages, stream frames to disk."""

import time

from absl import logging

from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm
from videoldm.pipelines import writer


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
             gif: bool = False, spatial_from: str | None = None, overwrite: bool = False) -> int:
  """Loads the run's stages, streams the video into `out`; returns the frame count.

  Text prompts need only the (text) video stage. `spatial_from` (an SD folder,
  export folder, workdir or params file) replaces the spatial params of the
  image, video and interpolation stages, keeping the trained temporal layers (Sec. 4.2.1).
  Existing outputs are refused unless `overwrite` (checked before any loading).
  """
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
  pipeline = video_ldm.VideoLDM(models, settings)
  progress = Progress(settings.num_frames)
  with writer.VideoWriter(out, fps, gif, overwrite=overwrite) as video:
    for frame in pipeline.frames():
      video.append(frame)
      progress(video.count)
  return video.count
