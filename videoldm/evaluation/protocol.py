"""Evaluation protocols, stored with the real-data statistics they produced.

A Fréchet distance is comparable with another only under the same protocol:
the feature network (its weights file's digest), which real clips (source,
split, how many, frames per clip, frame stride), their resolution and the
preprocessing before the network's own resize. The defaults are StyleGAN-V's
FVD protocol: 2,048 clips of 16 consecutive frames, each frame centre-cropped
to a square before the network resizes it (bilinear, no antialiasing). `save_stats` writes the real features' mean and
covariance with the protocol; `load_stats` returns them only for an equal
protocol and otherwise raises one error naming every field that differs, so
statistics computed once are reused safely and a mismatch is never silent.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

NUM_VIDEOS = 2048  # Clips per FVD / FID / IS evaluation (StyleGAN-V's fvd2048_16f).
NUM_FRAMES = 16  # Frames per clip: FVD's and the C3D classifier's (video IS) clip length.
PREPROCESSING = 'centre square crop, network resize (bilinear, no antialiasing)'


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What a metric's real statistics depend on."""
  metric: str  # 'fid' (frames) or 'fvd' (clips)
  network: str  # The feature network's weights file: name and sha256 prefix.
  source: str  # Dataset or video source, and split.
  num_videos: int
  num_frames: int
  frame_stride: int
  resolution: tuple[int, int]  # (h, w) of the clips before preprocessing.
  preprocessing: str = PREPROCESSING

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), resolution=list(self.resolution))


def centre_square(videos: np.ndarray) -> np.ndarray:
  """The centred square crop of videos `(b, f, h, w, c)` (side min(h, w))."""
  h, w = videos.shape[2:4]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return videos[:, :, top:top + side, left:left + side]


def network_id(weights_path: str) -> str:
  """`<file name>@<sha256 prefix>` of a weights file: two files with one name differ."""
  digest = hashlib.sha256()
  with open(weights_path, 'rb') as file:
    for block in iter(lambda: file.read(1 << 20), b''):
      digest.update(block)
  return f'{os.path.basename(weights_path)}@{digest.hexdigest()[:16]}'


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean `(d,)` and covariance `(d, d)` of features `(n, d)` (float64)."""
  features = np.asarray(features, np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def save_stats(path: str, features, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
  """Writes the mean and covariance of `features` with `protocol` to `path` (.npz)."""
  mu, sigma = statistics(features)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'wb') as file:
    np.savez(file, mu=mu, sigma=sigma, protocol=json.dumps(protocol.to_json(), sort_keys=True))
  return mu, sigma


def load_stats(path: str, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
  """The statistics stored at `path`; a ValueError naming each field whose stored value
  differs from `protocol`'s."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Real statistics {path!r} do not exist.')
  with np.load(path) as file:
    stored = json.loads(str(file['protocol']))
    mu, sigma = file['mu'], file['sigma']
  wanted = protocol.to_json()
  differing = [f'{key} {stored.get(key)!r} -> {wanted.get(key)!r}'
               for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key)]
  if differing:
    raise ValueError(f'Real statistics {path!r} were computed under another protocol: '
                     f'{", ".join(differing)}; delete them or evaluate under their protocol.')
  return mu, sigma
