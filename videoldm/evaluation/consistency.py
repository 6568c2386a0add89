"""Temporal consistency measures on videos `(b, f, h, w, c)` (paper Sec. 4 asks for coherence).

  feature_change     mean L2 distance between consecutive frames' features,
                     over the mean feature norm (scale-free; real clips give
                     the reference value of smooth motion).
  identity           a digit classifier's top-k digits per frame compared with
                     the clip's most frequent prediction: 1.0 when the digits
                     keep their identity over the whole clip.
  label_agreement    fraction of frames whose top-k digits contain the clip's
                     conditioning labels (caption/label vs video agreement).
  flicker            for reconstructions paired with their source: mean
                     |(x[i+1] - x[i]) - (r[i+1] - r[i])|, the temporal change
                     that the source does not have (0 for a perfect decoder).
"""

import collections

import numpy as np


def feature_change(frame_features) -> float:
  """Mean |phi(x[i+1]) - phi(x[i])| / mean |phi(x)| over clips `(b, f, d)`, f >= 2."""
  features = np.asarray(frame_features, np.float64)
  if features.ndim != 3 or features.shape[1] < 2:
    raise ValueError(f'Frame features must have shape (b, f, d) with f >= 2, got '
                     f'{features.shape}.')
  step = np.linalg.norm(np.diff(features, axis=1), axis=-1).mean()
  return float(step / max(np.linalg.norm(features, axis=-1).mean(), 1e-12))


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
  return np.sort(np.argsort(-probs, axis=-1)[..., :k], axis=-1)


def identity_per_clip(frame_probs, num_digits: int) -> np.ndarray:
  """Per clip `(b,)`: fraction of frames whose top-k digits equal the clip's most common top-k."""
  probs = np.asarray(frame_probs)
  if probs.ndim != 3:
    raise ValueError(f'Frame probabilities must have shape (b, f, classes), got {probs.shape}.')
  predicted = _top_k(probs, num_digits)  # (b, f, k)
  scores = []
  for clip in predicted:
    counts = collections.Counter(map(tuple, clip))
    scores.append(counts.most_common(1)[0][1] / len(clip))
  return np.asarray(scores)


def identity_consistency(frame_probs, num_digits: int) -> float:
  """Mean of `identity_per_clip`: 1.0 when no clip's digits change identity."""
  return float(identity_per_clip(frame_probs, num_digits).mean())


def label_agreement(frame_probs, labels, num_digits: int) -> float:
  """Fraction of frames whose top-k digits contain every label of their clip.

  `labels`: int `(b, n)` (n <= num_digits), e.g. the conditioning class or the
  digits a caption names (`digits.caption_digits`).
  """
  probs, labels = np.asarray(frame_probs), np.asarray(labels)
  if labels.ndim == 1:
    labels = labels[:, None]
  if labels.shape[0] != probs.shape[0] or labels.shape[1] > num_digits:
    raise ValueError(f'labels shape {labels.shape} does not fit frame probabilities '
                     f'{probs.shape} with {num_digits} digits per frame.')
  predicted = _top_k(probs, num_digits)  # (b, f, k)
  hit = (predicted[:, :, :, None] == labels[:, None, None, :]).any(axis=2)  # (b, f, n)
  return float(hit.all(axis=-1).mean())


def flicker(videos, references) -> float:
  """Mean |(x[i+1] - x[i]) - (r[i+1] - r[i])| of paired videos `(b, f, h, w, c)` (pixel units)."""
  videos, references = np.asarray(videos, np.float64), np.asarray(references, np.float64)
  if videos.shape != references.shape or videos.ndim != 5 or videos.shape[1] < 2:
    raise ValueError(f'flicker needs paired videos (b, f, h, w, c) with f >= 2, got '
                     f'{videos.shape} and {references.shape}.')
  return float(np.abs(np.diff(videos, axis=1) - np.diff(references, axis=1)).mean())


def shuffle_frames_across_clips(videos, key_seed: int = 0) -> np.ndarray:
  """Each frame position's frames permuted across clips (a broken-identity control)."""
  videos = np.asarray(videos)
  out = videos.copy()
  generator = np.random.default_rng(key_seed)
  for i in range(videos.shape[1]):
    out[:, i] = videos[generator.permutation(videos.shape[0]), i]
  return out
