"""Fréchet distance between Gaussian fits of two feature sets (FID / FVD).

  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

`tr((S1 S2)^(1/2))` is computed from the symmetric positive semi-definite
matrix `sqrt(S1) S2 sqrt(S1)` (same eigenvalues as `S1 S2`) with symmetric
eigendecompositions in float64, so near-singular or rank-deficient
covariances (fewer samples than feature dimensions) give a finite,
non-negative result without the complex round-off of a general `sqrtm`.
Host-side NumPy: metrics run once per evaluation, not inside `jit`.
"""

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off clipped)."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """`tr((sigma1 sigma2)^(1/2))` for symmetric PSD `sigma1`, `sigma2`."""
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean `(d,)` and covariance `(d, d)` (float64, unbiased) of features `(n, d)`."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'Features must have shape (n, d) with n >= 2, got {features.shape}.')
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), >= 0."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'Statistics shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma '
                     f'{sigma1.shape} vs {sigma2.shape}; expected (d,) and (d, d) for both.')
  difference = mu1 - mu2
  distance = (difference @ difference + np.trace(sigma1) + np.trace(sigma2)
              - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return float(max(distance, 0.0))


def frechet_distance(features1, features2) -> float:
  """Squared Fréchet distance between the Gaussian fits of `(n1, d)` and `(n2, d)` features."""
  return frechet_distance_from_stats(*gaussian_stats(features1), *gaussian_stats(features2))
