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
                       seed: int, depth: int) -> str:
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

### Table 3 analogue: decoder and upsampler

Decoder rows: reconstructions of 8 consecutive test frames (32 px) from the
same latents. Upsampler rows: x4 upsampling of 4 consecutive test frames
downsampled to 32 px, compared with the 128 px originals (L1 and flicker at
128 px; FVD-md / FID-md after resizing to the nets' 32 px).

{table3}

Base stages (autoencoder, image LDM, decoder, upsamplers) are those of the
README's quickstart; the video variants start from its image LDM. The
attention-only row stacks {depth} temporal attention blocks per level, the
depth whose parameter count is closest to ours (see Trainable params).
"""
