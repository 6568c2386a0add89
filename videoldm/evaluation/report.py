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


def ablations_markdown(table1: str, table3: str, *, command: str, steps: dict, seconds: float,
                       timings: dict, machine: str, nets: dict, num_videos: int,
                       seed: int) -> str:
  """The "Ablations" section of bench/RESULTS.md."""
  timing_text = ', '.join(f'{name} {value:.0f} s' for name, value in timings.items())
  return f"""## Ablations at toy scale (paper Tables 1 and 3)

Command: `{command}` — seed {seed}, {num_videos} test clips per row, steps {steps}.
Machine: {machine}. Total wall time {seconds / 60:.1f} min ({timing_text}).

Metrics use the project's own digit nets trained on `moving_digits`
(`videoldm/evaluation/digits.py`; record: held-out frame digit accuracy
{nets.get('frame_digit_accuracy', float('nan')):.3f}, clip motion accuracy
{nets.get('clip_motion_accuracy', float('nan')):.3f}, seed {nets.get('seed')}), so they are
FVD-md / FID-md, not comparable with the paper's FVD / FID. With fewer clips
than feature dimensions (64) the covariances are rank-deficient; the Fréchet
distance stays finite but is noisy. Lower is better for FVD-md, FID-md,
flicker; identity and label agreement are fractions (1 = perfect).

### Table 1 analogue: video generation (continue 1 real frame, 8 frames at stride 4)

{table1}

### Table 3 analogue: temporal decoder (reconstructions of 8 consecutive frames)

{table3}

The Table 3 upsampler rows (image vs video upsampler, 128 px) are not run: training
two 128 px pixel-space upsamplers exceeds this shared 2-core CPU's budget. The
attention-only row's depth is the closest match to ours' temporal parameter count
that depth <= 3 allows (see the Trainable params column; not an exact match).
"""
