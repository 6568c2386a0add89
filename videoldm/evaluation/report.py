"""Evaluation reports: JSON files, TensorBoard scalars (clu writers), Markdown tables."""

import json
import os

from clu import metric_writers


def write_json(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as file:
    json.dump(report, file, indent=1, sort_keys=True, default=str)


def write_scalars(writer: metric_writers.MetricWriter, step: int, report: dict,
                  prefix: str = 'metrics/') -> None:
  """Every numeric entry of `report` as a scalar `<prefix><name>` at `step`."""
  scalars = {f'{prefix}{name}': float(value) for name, value in report.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)}
  writer.write_scalars(step, scalars)
  writer.flush()

