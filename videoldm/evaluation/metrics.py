"""Video metrics over a pluggable feature extractor: FID (frames), FVD (clips), consistency.

`FeatureExtractor` is the interface: `frame_features(videos) -> (b, f, d)` and
`clip_features(videos) -> (b, d)`. The digit nets (`digits.FeatureNetworks`,
metric names suffixed `-md`) implement it, and so do the standard Inception /
I3D networks when their weights are on disk (`StandardExtractor`, unsuffixed
names). Videos are `(b, f, h, w, 3)` in [-1, 1].
"""

from typing import Protocol

import einops
import numpy as np

from videoldm.evaluation import consistency
from videoldm.evaluation import frechet


class FeatureExtractor(Protocol):
  suffix: str

  def frame_features(self, videos) -> np.ndarray:
    """Per-frame features `(b, f, d)` of videos `(b, f, h, w, 3)` in [-1, 1]."""

  def clip_features(self, videos) -> np.ndarray:
    """Per-clip features `(b, d)` of videos `(b, f, h, w, 3)` in [-1, 1]."""


def fid(extractor, generated, real) -> float:
  """Fréchet distance between per-frame features of all frames of `generated` and `real`."""
  flat = lambda v: einops.rearrange(extractor.frame_features(v), 'b f d -> (b f) d')
  return frechet.frechet_distance(flat(generated), flat(real))


def fvd(extractor, generated, real) -> float:
  """Fréchet distance between per-clip features of `generated` and `real`."""
  return frechet.frechet_distance(extractor.clip_features(generated),
                                  extractor.clip_features(real))


def inception_score(probs, splits: int = 1) -> tuple[float, float]:
  """IS = exp(E_x KL(p(y|x) || p(y))) of class probabilities `(n, classes)`: the mean and
  standard deviation over `splits` equal parts (Salimans et al.; video IS applies it to a
  clip classifier's outputs). 1 for identical predictions; the class count for confident,
  balanced ones."""
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or len(probs) < splits or splits < 1:
    raise ValueError(f'Inception score needs probabilities (n, classes) with n >= splits='
                     f'{splits} >= 1, got shape {probs.shape}.')
  if np.any(probs < 0) or not np.allclose(probs.sum(-1), 1.0, atol=1e-4):
    raise ValueError('Inception score needs probabilities: non-negative rows that sum to 1.')
  scores = []
  for part in np.array_split(probs, splits):
    marginal = part.mean(0, keepdims=True)
    kl = np.sum(np.where(part > 0, part * (np.log(np.maximum(part, 1e-300))
                                           - np.log(np.maximum(marginal, 1e-300))), 0.0), -1)
    scores.append(float(np.exp(kl.mean())))
  return float(np.mean(scores)), float(np.std(scores))


def check_videos(videos, name: str) -> np.ndarray:
  videos = np.asarray(videos, np.float32)
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] < 2:
    raise ValueError(f'{name} must be RGB videos (b, f, h, w, 3) with f >= 2, got '
                     f'{videos.shape}.')
  return videos


def digit_video_metrics(nets, generated, real, labels=None, references=None) -> dict:
  """FID-md, FVD-md and consistency of `generated` against `real` (digit nets `nets`).

  `labels` (int `(b,)` or `(b, n)`): the conditioning digits of `generated`
  (adds `label_agreement`). `references`: the videos `generated` reconstructs,
  paired (adds `flicker`). Real-data consistency values are reported alongside
  as `real/...` for reference.
  """
  generated, real = check_videos(generated, 'generated'), check_videos(real, 'real')
  frame_gen, frame_real = nets.frame_features(generated), nets.frame_features(real)
  probs_gen, probs_real = nets.frame_probs(generated), nets.frame_probs(real)
  report = {
      'fid_md': frechet.frechet_distance(einops.rearrange(frame_gen, 'b f d -> (b f) d'),
                                         einops.rearrange(frame_real, 'b f d -> (b f) d')),
      'fvd_md': fvd(nets, generated, real),
      'feature_change': consistency.feature_change(frame_gen),
      'identity': consistency.identity_consistency(probs_gen, nets.num_digits),
      'real/feature_change': consistency.feature_change(frame_real),
      'real/identity': consistency.identity_consistency(probs_real, nets.num_digits),
      'num_videos': int(len(generated)),
  }
  if labels is not None:
    report['label_agreement'] = consistency.label_agreement(probs_gen, labels, nets.num_digits)
  if references is not None:
    report['flicker'] = consistency.flicker(generated, check_videos(references, 'references'))
  return report


def standard_video_metrics(extractor, generated, real) -> dict:
  """FID and FVD with the standard networks (see `inception.py`, `i3d.py`)."""
  generated, real = check_videos(generated, 'generated'), check_videos(real, 'real')
  return {'fid': fid(extractor, generated, real), 'fvd': fvd(extractor, generated, real)}
