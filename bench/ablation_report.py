"""The Ablations section of bench/RESULTS.md from `bench/ablations.py`'s record.

The record holds, per table, rows `[title, {metric: [value per seed]}]` (counts
such as parameters are single numbers); cells show "mean ± sd" over seeds and
the verdicts use `videoldm.evaluation.ablation_stats.compare` on FVD-md.
"""

import math
import os

from videoldm.evaluation import ablation_stats

SECTION_START, SECTION_END = '<!-- ablations:start -->', '<!-- ablations:end -->'
COLUMNS1 = [('FVD-md', 'fvd_md'), ('FID-md', 'fid_md'), ('Identity', 'identity'),
            ('Label agreement', 'label_agreement'), ('Feature change', 'feature_change'),
            ('Trainable params', 'trainable_params'), ('Total params', 'total_params')]
COLUMNS3 = [('FVD-md', 'fvd_md'), ('FID-md', 'fid_md'), ('Flicker', 'flicker'),
            ('L1 to source', 'l1'), ('Identity', 'identity')]
PAPER_CLAIMS = (  # (table, better row, worse row, what the paper reports)
    (1, 'Ours: conv3d', 'Image LDM, frame by frame', 'temporal layers beat frame-wise sampling'),
    (1, 'Ours: conv3d', 'Pixel-space', 'the latent model beats a pixel-space one of its size'),
    (1, 'Ours: conv3d', 'End-to-end', 'image pre-training helps (LDM vs end-to-end)'),
    (1, 'Ours: conv3d', 'Attention-only', 'conv3d + attention beats attention only'),
    (1, 'Ours + context guidance', 'Ours: conv3d', 'context guidance improves FVD'),
    (3, 'Temporally fine-tuned decoder', 'Image decoder', 'the temporal decoder lowers FVD'),
    (3, 'Video upsampler', 'Image upsampler', 'the video upsampler lowers FVD'),
)


def cell(value) -> str:
  """"mean ± sd" of per-seed values (just the mean for one seed); counts as integers."""
  if isinstance(value, list):
    mean, sd = ablation_stats.mean_sd(value)
    return f'{mean:.3g}' if math.isnan(sd) else f'{mean:.3g} ± {sd:.2g}'
  if isinstance(value, (int, float)):
    return f'{int(value):,}' if float(value).is_integer() else f'{value:.3g}'
  return '-'


def table(rows: list, columns: list[tuple[str, str]]) -> str:
  lines = ['| ' + ' | '.join(['Method'] + [title for title, _ in columns]) + ' |',
           '|' + '---|' * (len(columns) + 1)]
  for name, values in rows:
    lines.append('| ' + ' | '.join([name] + [cell(values.get(key)) for _, key in columns]) + ' |')
  return '\n'.join(lines)


def row(rows: list, prefix: str):
  return next((values for name, values in rows if name.startswith(prefix)), None)


def comparisons(record) -> list:
  """(table, claim, Comparison or None) per paper claim, on FVD-md over seeds."""
  out = []
  for table_id, better, worse, claim in PAPER_CLAIMS:
    a, b = row(record[f'table{table_id}'], better), row(record[f'table{table_id}'], worse)
    result = None if a is None or b is None else ablation_stats.compare(a['fvd_md'],
                                                                        b['fvd_md'])
    out.append((table_id, claim, result))
  return out


def summary(record) -> str:
  """"H of N paper directions hold clearly, U not resolved[, A against]"."""
  directions = [r.direction for _, _, r in comparisons(record) if r is not None]
  text = (f'{directions.count(1)} of {len(directions)} paper directions hold clearly, '
          f'{directions.count(0)} not resolved')
  return text + (f', {directions.count(-1)} against' if -1 in directions else '')


def fvd_comparison(result: ablation_stats.Comparison) -> str:
  """'FVD-md a ± sd vs b ± sd (difference, 2 x combined sd)'; one seed has no error bars."""
  if math.isnan(result.margin):
    return f'FVD-md {result.mean_a:.3g} vs {result.mean_b:.3g} (one seed: no error bars)'
  return (f'FVD-md {result.mean_a:.3g} ± {result.sd_a:.2g} vs {result.mean_b:.3g} ± '
          f'{result.sd_b:.2g} (difference {abs(result.mean_a - result.mean_b):.3g}, 2 x '
          f'combined sd {result.margin:.3g})')


def verdicts(record) -> str:
  """One line per paper claim: does the toy FVD-md go the paper's way, past the error bars?"""
  lines = []
  for table_id, claim, result in comparisons(record):
    if result is None:
      lines.append(f'- Table {table_id}, {claim}: not measured.')
      continue
    verdict = {1: "agrees with the paper's direction",
               -1: "goes against the paper's direction",
               0: 'not resolved at this scale'}[result.direction]
    lines.append(f'- Table {table_id}, {claim}: {fvd_comparison(result)} -> {verdict}.')
  ours, real = row(record['table1'], 'Ours: conv3d'), row(record['table1'], 'Real')
  if ours is not None and ablation_stats.mean_sd(ours['label_agreement'])[0] < 0.2:
    lines.append(f'- Caveat: the generated clips do not show their conditioning digit yet '
                 f'(label agreement {cell(ours["label_agreement"])}; chance is 0.10, real clips '
                 f'{cell(real["label_agreement"])}): the models are undertrained at these step '
                 "counts, so this run checks the pipeline end to end, not the paper's claims.")
  return '\n'.join(lines)


def markdown(record, *, command: str, steps: dict, machine: str) -> str:
  """The whole section body."""
  nets, seeds = record['feature_nets'], record['seeds']
  timing_text = ', '.join(f'{name} {value:.0f} s' for name, value in record['timings'].items())
  pixel = record['pixel']
  p = pixel['patch_size']
  side = 32 // p
  pixel_params = row(record['table1'], 'Pixel-space') or {}
  ours_params = row(record['table1'], 'Ours: conv3d') or {}
  ratio = pixel_params.get('total_params', math.nan) / ours_params.get('total_params', math.nan)
  return f"""## Ablations at toy scale (paper Tables 1 and 3)

Command: `{command}` — seeds {seeds}: each video variant, the temporal decoder and the video
upsampler are trained, and every row sampled, once per seed; cells are mean ± sample
standard deviation over the {len(seeds)} seeds. {record['num_videos']} test clips per row,
steps {steps}.
Machine: {machine}. Total wall time {record['total_seconds'] / 60:.1f} min ({timing_text}).

Metrics use the project's own digit nets trained on `moving_digits`, the same for every
seed (`videoldm/evaluation/digits.py`; record: held-out frame digit accuracy
{nets.get('frame_digit_accuracy', math.nan):.3f}, clip motion accuracy
{nets.get('clip_motion_accuracy', math.nan):.3f}, seed {nets.get('seed')}), so they are
FVD-md / FID-md, not comparable with the paper's FVD / FID. With fewer clips than feature
dimensions (64) the covariances are rank-deficient; the Fréchet distance stays finite but is
noisy. Lower is better for FVD-md, FID-md, flicker; identity and
label agreement are fractions (1 = perfect).

### Table 1 analogue: video generation (continue 1 real frame, 8 frames at stride 4)

{table(record['table1'], COLUMNS1)}

The pixel-space row has no autoencoder (`model.pixel_patch_size` {p}): it diffuses the
32x32x3 frames, which its U-Net reads as {p}x{p} patches ({side}x{side}x{3 * p * p}: a
parameter-free permutation, so a step costs about what ours does). Its widths
{tuple(pixel['block_out_channels'])} make its total parameters {ratio:.3f}x ours (autoencoder
included); it is trained from scratch with the end-to-end row's data and steps, and sampled
and evaluated as every row.

### Table 3 analogue: decoder and upsampler

Decoder rows: reconstructions of 8 consecutive test frames (32 px) from the
same latents. Upsampler rows: x4 upsampling of 4 consecutive test frames
downsampled to 32 px, compared with the 128 px originals (L1 and flicker at
128 px; FVD-md / FID-md after resizing to the nets' 32 px). The image decoder
and image upsampler are the base run's; per seed only sampling changes for them.

{table(record['table3'], COLUMNS3)}

Base stages (autoencoder, image LDM, image upsampler) are those of the
README's quickstart; the video variants start from its image LDM. The
attention-only row stacks {record['attention_only_depth']} temporal attention blocks per
level, the depth whose parameter count is closest to ours (see Trainable params).

### Direction vs the paper

A direction is named only when the FVD-md means differ by more than twice the
combined standard deviation, 2 sqrt(sd_a^2 + sd_b^2); otherwise it is not
resolved at this scale. Summary: {summary(record)}.

{verdicts(record)}
"""


def write_section(path: str, body: str, start: str = SECTION_START,
                  end: str = SECTION_END) -> None:
  """Replaces (or appends) the section between the `start` and `end` markers of the results
  file (by default the ablations section)."""
  text = '# videoldm benchmark results\n\n'
  if os.path.isfile(path):
    with open(path) as file:
      text = file.read()
  section = f'{start}\n{body.strip()}\n{end}'
  if start in text and end in text:
    head, rest = text.split(start, 1)
    text = head + section + rest.split(end, 1)[1]
  else:
    text = text.rstrip() + '\n\n' + section + '\n'
  with open(path, 'w') as file:
    file.write(text)
