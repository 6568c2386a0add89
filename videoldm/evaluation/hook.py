"""Periodic evaluation during training: digit metrics of the stage's samples.

The trainer calls `MetricsHook(config, workdir)(step, samples, writer)` every
`config.metrics_every` steps with the dict `stage.sample` returns (videos in
[-1, 1], the real clips under 'data'); each other video entry with the same
frame count is scored against 'data' with `metrics.digit_video_metrics` and
written as scalars `metrics/<entry>/<name>`. The digit nets are trained once
on first use and cached under `<workdir>/feature_nets`.
"""

import os

from absl import logging
import numpy as np

from videoldm.evaluation import digits
from videoldm.evaluation import metrics
from videoldm.evaluation import report


class MetricsHook:
  """Scores sample videos against the eval clips and logs the metrics."""

  def __init__(self, config, workdir: str):
    self.spec = digits.spec_from_data_config(config.data)
    self.cache_dir = os.path.join(workdir, 'feature_nets')
    self.seed = int(config.seed)
    self._nets = None

  @property
  def nets(self) -> digits.FeatureNetworks:
    if self._nets is None:
      self._nets = digits.load_or_train(self.spec, self.cache_dir, seed=self.seed)
    return self._nets

  def __call__(self, step: int, samples: dict, writer) -> dict:
    if 'data' not in samples:
      raise ValueError(f'Stage samples {sorted(samples)} have no "data" entry to compare with.')
    real = np.asarray(samples['data'])
    results = {}
    for name, videos in samples.items():
      videos = np.asarray(videos)
      if name == 'data' or videos.shape[:2] != real.shape[:2] or videos.shape[1] < 2:
        continue
      values = metrics.digit_video_metrics(self.nets, videos, real)
      report.write_scalars(writer, step, values, prefix=f'metrics/{name}/')
      results[name] = values
    logging.info('Metrics at step %d: %s', step, results)
    return results
