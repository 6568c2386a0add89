"""evaluation/ablation_stats.py: mean +- sample sd over seeds; a direction only past 2 sd."""

import math

import pytest

from videoldm.evaluation import ablation_stats


def test_mean_sd_is_the_sample_standard_deviation():
  mean, sd = ablation_stats.mean_sd([1.0, 2.0, 6.0])
  assert mean == pytest.approx(3.0)
  assert sd == pytest.approx(math.sqrt(((1 - 3)**2 + (2 - 3)**2 + (6 - 3)**2) / 2))
  assert math.isnan(ablation_stats.mean_sd([4.0])[1])


def test_direction_needs_more_than_twice_the_combined_sd():
  a, b = [10.0, 12.0], [20.0, 22.0]  # sd sqrt(2) each: combined 2, margin 4; means 11 vs 21.
  result = ablation_stats.compare(a, b)
  assert result.margin == pytest.approx(4.0)
  assert (result.mean_a, result.mean_b) == (11.0, 21.0)
  assert result.direction == 1  # Lower is better: a wins by 10 > 4.
  assert ablation_stats.compare(b, a).direction == -1
  assert ablation_stats.compare(a, b, lower_is_better=False).direction == -1
  # Means 5 apart, sd sqrt(2) each: margin 2 sqrt(2 + 2) = 4 < 5, resolved (twice the *sum*
  # of the sds, 5.66, would not be); sd 2 sqrt(2) each: margin 2 sqrt(8 + 8) = 8 > 5, not.
  assert ablation_stats.compare([4.0, 6.0], [9.0, 11.0]).direction == 1
  assert ablation_stats.compare([3.0, 7.0], [8.0, 12.0]).direction == 0


def test_a_single_seed_resolves_nothing():
  assert ablation_stats.compare([1.0], [100.0]).direction == 0
  with pytest.raises(ValueError, match='non-empty'):
    ablation_stats.mean_sd([])
