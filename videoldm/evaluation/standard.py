"""FID, FVD, IS and CLIP similarity with the published networks, fed batch by batch.

`StandardMetrics` loads the networks the user has weights for (Inception-v3
for FID, I3D for FVD, C3D for video IS: `.npz` files written by
`convert/feature_networks.py`; a local CLIPModel folder for CLIPSIM), takes
real clips and generated videos a batch at a time (so 2,048 clips never sit
in memory), keeps only features, and reports each metric with its protocol
(`protocol.py`). Every clip is centre-cropped to a square before a network's
own resize. Real FID / FVD statistics are read from `<output>/real_<metric>.npz`
when stored under the same protocol, else computed and stored there.

  FID   Inception pool features of every frame, Frechet distance.
  FVD   I3D logits of each clip, Frechet distance.
  IS    C3D class probabilities of each generated 16-frame clip; exp E KL(p(y|x) || p(y))
        over `is_splits` parts (mean and standard deviation).
  CLIPSIM  mean raw cosine of each generated frame with its caption.
"""

import dataclasses
import os

import einops
import numpy as np

from videoldm.evaluation import c3d
from videoldm.evaluation import clip_score
from videoldm.evaluation import frechet
from videoldm.evaluation import i3d
from videoldm.evaluation import inception
from videoldm.evaluation import metrics
from videoldm.evaluation import protocol as protocol_lib


@dataclasses.dataclass(frozen=True)
class Networks:
  """Where each network's weights are; an empty string leaves its metric out."""
  inception_weights: str = ''
  i3d_weights: str = ''
  c3d_weights: str = ''
  clip_dir: str = ''


class StandardMetrics:
  """Accumulates features of real and generated videos; `results()` gives the metrics."""

  def __init__(self, networks: Networks, output: str, source: str, num_videos: int,
               num_frames: int, frame_stride: int, resolution: tuple[int, int],
               is_splits: int = 1):
    if networks.c3d_weights and num_frames != c3d.INPUT_FRAMES:
      raise ValueError(f'Video IS uses {c3d.INPUT_FRAMES}-frame clips (C3D), got '
                       f'num_frames={num_frames}.')
    self.output, self.is_splits = output, is_splits
    protocol = lambda metric, path: protocol_lib.Protocol(
        metric, protocol_lib.network_id(path), source, num_videos, num_frames, frame_stride,
        tuple(resolution))
    self.features, self.protocols, self.stored = {}, {}, {}
    if networks.inception_weights:
      net = inception.InceptionExtractor(networks.inception_weights)
      self.features['fid'] = lambda v: einops.rearrange(net.frame_features(v),
                                                        'b f d -> (b f) d')
      self.protocols['fid'] = protocol('fid', networks.inception_weights)
    if networks.i3d_weights:
      self.features['fvd'] = i3d.I3DExtractor(networks.i3d_weights).clip_features
      self.protocols['fvd'] = protocol('fvd', networks.i3d_weights)
    for metric, proto in self.protocols.items():
      path = self.stats_path(metric)
      if os.path.isfile(path):  # Raises when stored under another protocol.
        self.stored[metric] = protocol_lib.load_stats(path, proto)
    self.classifier = c3d.C3DClassifier(networks.c3d_weights) if networks.c3d_weights else None
    if self.classifier:
      self.protocols['is'] = protocol('is', networks.c3d_weights)
    self.scorer = clip_score.ClipScorer(networks.clip_dir) if networks.clip_dir else None
    self.real = {metric: [] for metric in self.features if metric not in self.stored}
    self.generated = {metric: [] for metric in self.features}
    self.probs, self.cosines = [], []

  def stats_path(self, metric: str) -> str:
    return os.path.join(self.output, f'real_{metric}.npz')

  @property
  def needs_real(self) -> bool:
    return bool(self.real)

  def add(self, generated, real=None, captions=None) -> None:
    """One batch: generated videos, their real clips (while needed) and captions (CLIPSIM)."""
    squared = protocol_lib.centre_square(metrics.check_videos(generated, 'generated'))
    for metric, features in self.features.items():
      self.generated[metric].append(features(squared))
    if self.real:
      if real is None:
        raise ValueError(f'Real clips are needed for {sorted(self.real)} (no stored statistics).')
      real = protocol_lib.centre_square(metrics.check_videos(real, 'real'))
      for metric, batches in self.real.items():
        batches.append(self.features[metric](real))
    if self.classifier:
      self.probs.append(self.classifier.clip_probs(squared))
    if self.scorer:
      if captions is None:
        raise ValueError('CLIP similarity needs the captions of the generated videos.')
      self.cosines.append(self.scorer.cosines(generated, captions))

  def results(self) -> tuple[dict, dict]:
    """(metrics, protocols): FID / FVD (stores the real statistics the first time), IS and
    its standard deviation over the splits, CLIPSIM."""
    results, protocols = {}, {}
    for metric, proto in self.protocols.items():
      protocols[metric] = proto.to_json()
      if metric not in self.features:
        continue
      if metric in self.stored:
        mu, sigma = self.stored[metric]
      else:
        mu, sigma = protocol_lib.save_stats(self.stats_path(metric),
                                            np.concatenate(self.real[metric]), proto)
      generated = protocol_lib.statistics(np.concatenate(self.generated[metric]))
      results[metric] = frechet.frechet_distance_from_stats(*generated, mu, sigma)
    if self.classifier:
      results['is'], results['is_std'] = metrics.inception_score(np.concatenate(self.probs),
                                                                 self.is_splits)
      protocols['is']['splits'] = self.is_splits
    if self.scorer:
      results['clip_similarity'] = float(np.concatenate(self.cosines).mean())
      protocols['clip_similarity'] = {'score': 'mean raw cosine, every frame with its caption'}
    return results, protocols
