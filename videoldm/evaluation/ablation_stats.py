"""Error bars over seeds, and when the difference of two rows counts as resolved.

A metric measured once per seed is summarised by its mean and sample standard
deviation (`mean_sd`, ddof 1: no spread, so no error bar, from a single seed).
`compare` names a direction only when the means differ by more than twice the
combined standard deviation, `2 sqrt(sd_a^2 + sd_b^2)`; otherwise the
difference is not resolved at this scale (also whenever a spread is unknown).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample standard deviation) of per-seed values; sd is nan for a single value."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f'Expected a non-empty list of per-seed values, got shape {values.shape}.')
  sd = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
  return float(np.mean(values)), sd


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Row a vs row b on one metric: +1 a is better, -1 a is worse, 0 not resolved."""

  mean_a: float
  sd_a: float
  mean_b: float
  sd_b: float
  margin: float  # 2 sqrt(sd_a^2 + sd_b^2); nan when a spread is unknown.
  direction: int


def compare(a: Sequence[float], b: Sequence[float], lower_is_better: bool = True) -> Comparison:
  """Compares per-seed values `a` and `b`: resolved iff |mean_a - mean_b| > the margin."""
  (mean_a, sd_a), (mean_b, sd_b) = mean_sd(a), mean_sd(b)
  margin = 2.0 * math.sqrt(sd_a**2 + sd_b**2)
  direction = 0
  if abs(mean_a - mean_b) > margin:  # False for a nan margin.
    a_lower = mean_a < mean_b
    direction = 1 if a_lower == lower_is_better else -1
  return Comparison(mean_a, sd_a, mean_b, sd_b, margin, direction)
