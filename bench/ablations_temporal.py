r"""Ablations of the temporal layers' options at toy scale, over seeds.

Extends `bench/ablations.py` (same base run, test clips, digit nets, seeds and
protocol: each model continues the first frame of the test clips under their
label) with rows that change one option of the quickstart's video stage:

  attention  `model.unet.temporal.attention`: temporal (ours), full, causal,
             sparse_causal, temporal layers trained on the frozen image LDM.
  joint      the whole U-Net fine-tuned from the image LDM on video only vs with
             a quarter of each batch trained as images (`model.joint`); both with
             the `learned_with_images` merge. With frozen spatial layers image
             examples give no gradient at all, so joint training is compared
             where it can matter.

Cells are mean ± sd over the seeds; a verdict names a direction only when
FVD-md differs by more than twice the combined standard deviation.

  python bench/ablations_temporal.py --workdir=/tmp/videoldm_ablations_seeds \
      --base_run=/tmp/videoldm_quickstart --seeds=3
Writes the "Ablations: temporal attention and joint training" section of
bench/RESULTS.md (between its markers) and `<workdir>/ablations_temporal.json`;
each seed's metrics are kept in `<workdir>/seed<s>/metrics_temporal.json` (reused).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import ablation_report  # pylint: disable=g-import-not-at-top,wrong-import-position
import ablations  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.evaluation import ablation_stats  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.evaluation import digits  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.evaluation import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import chain  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS  # bench/ablations.py's flags: --workdir, --base_run, --seed(s), ...

START, END = '<!-- ablations-temporal:start -->', '<!-- ablations-temporal:end -->'
ATTENTION = 'model.unet.temporal.attention'
FINETUNE = {'trainable': r'^unet/', 'model.unet.temporal.merge_strategy': 'learned_with_images'}
ROWS = (  # (title, run name, config overrides); 'ours' is bench/ablations.py's run.
    ('Temporal attention over frames (ours)', 'ours', {}),
    ('Full space-time attention', 'attention_full', {ATTENTION: 'full'}),
    ('Causal attention', 'attention_causal', {ATTENTION: 'causal'}),
    ('Sparse-causal attention', 'attention_sparse_causal', {ATTENTION: 'sparse_causal'}),
    ('Fine-tuned end to end, video only', 'finetune_video', FINETUNE),
    ('Fine-tuned end to end, joint image-video (1/4 images)', 'finetune_joint',
     {**FINETUNE, 'model.joint.image_fraction': 0.25}),
)
OURS_TABLE1_ROW = next(  # bench/ablations.py's row of the same evaluation of 'ours'.
    title for title, name, guidance in ablations.TABLE1_ROWS if (name, guidance) == ('ours', 1.0))
COMPARISONS = (  # (row a, row b): is a's FVD-md lower than b's, past the error bars?
    ('attention_full', 'ours'), ('attention_causal', 'ours'),
    ('attention_sparse_causal', 'ours'), ('finetune_joint', 'finetune_video'))
COLUMNS = [column for column in ablation_report.COLUMNS1 if column[1] != 'total_params']


def _table1_ours(seed: int) -> dict | None:
  """bench/ablations.py's metrics of the same evaluation (ours, s = 1, this seed), if kept."""
  path = os.path.join(ablations.seed_dir(seed), 'metrics.json')
  if not os.path.isfile(path):
    return None
  with open(path) as file:
    table1 = dict(map(tuple, json.load(file)['table1']))
  return {key: float(value) for key, value in table1[OURS_TABLE1_ROW].items()}


def run_seed(seed: int, batch: dict, nets) -> dict:
  """Every row trained (unless done) and evaluated with `seed`: {run name: metrics}.

  Kept in `<workdir>/seed<s>/metrics_temporal.json` with the seconds it took; a
  re-run reads it, so seeds can be run one invocation at a time (`--seed=s --seeds=1`).
  """
  path = os.path.join(ablations.seed_dir(seed), 'metrics_temporal.json')
  if os.path.isfile(path):
    with open(path) as file:
      return json.load(file)
  start = time.time()
  real, labels = np.asarray(batch['video']), np.asarray(batch['labels'])[:, 0]
  out = {}
  for _, name, overrides in ROWS:
    workdir = ablations.train_video(seed, name, overrides)
    if name == 'ours' and (kept := _table1_ours(seed)):
      out[name] = kept
      continue
    videos = ablations.continue_clips(workdir, batch, 1.0, seed)
    out[name] = {key: float(value) for key, value in
                 metrics.digit_video_metrics(nets, videos, real, labels).items()}
  out['seconds'] = time.time() - start
  with open(path, 'w') as file:
    json.dump(out, file, indent=1)
  return out


def verdict_lines(rows: dict) -> list[str]:
  titles = {name: title for title, name, _ in ROWS}
  lines = []
  for a, b in COMPARISONS:
    result = ablation_stats.compare(rows[a]['fvd_md'], rows[b]['fvd_md'])
    verdict = {1: 'lower (better)', -1: 'higher (worse)', 0: 'not resolved at this scale'}
    lines.append(f'- {titles[a]} vs {titles[b]}: {ablation_report.fvd_comparison(result)} -> '
                 f'{verdict[result.direction]}.')
  return lines


def markdown(record) -> str:
  rows = [(title, dict(record['rows'][name], trainable_params=record['params'][name]))
          for title, name, _ in ROWS]
  return '\n'.join([
      '## Ablations: temporal attention and joint training', '',
      f'Command: `python bench/ablations_temporal.py {" ".join(record["argv"])}` '
      f'({record["date"]}); seeds {record["seeds"]}, {record["num_videos"]} test clips per row, '
      f'{record["steps"]} video steps per run, wall time of the seeds\' runs '
      f'{record["seconds"] / 60:.0f} min ({record["machine"]}).', '',
      'Each row changes one option of the quickstart\'s video stage and continues the first '
      'frame of the test clips (as Table 1 above; digit-net metrics, mean ± sd over seeds). '
      'The attention rows train the temporal layers on the frozen image LDM; the joint rows '
      'fine-tune the whole U-Net from it (image examples give gradients only to spatial '
      'layers).', '',
      ablation_report.table(rows, COLUMNS), '', *verdict_lines(record['rows'])])


def main(argv):
  del argv
  chain.train_all(ablations.base_run(), chain.quickstart_config_file(), ablations.config_arg(),
                  stages=ablations.BASE_STAGES)
  seeds = [FLAGS.seed + i for i in range(FLAGS.seeds)]
  ours = ablations.video_config(seeds[0])
  batch = ablations.test_clips(ours.data)
  nets = digits.load_or_train(digits.spec_from_data_config(ours.data),
                              os.path.join(FLAGS.workdir, 'feature_nets'), seed=0)
  runs = []  # Each seed's run carries its own seconds (possibly an earlier invocation's).
  for seed in seeds:
    logging.info('=== Temporal ablations, seed %d ===', seed)
    runs.append(run_seed(seed, batch, nets))
  rows = {name: {key: [run[name][key] for run in runs] for key in runs[0][name]}
          for _, name, _ in ROWS}
  params = {name: ablations.parameter_counts(ablations.video_config(seeds[0], **overrides))[0]
            for _, name, overrides in ROWS}
  record = dict(rows=rows, params=params, seeds=seeds, argv=sys.argv[1:],
                num_videos=len(batch['video']), steps=ablations.video_steps(),
                seconds=sum(run['seconds'] for run in runs),
                date=time.strftime('%Y-%m-%d'),
                machine=f'{os.cpu_count()} CPU cores, jax {jax.__version__}, load average '
                f'{os.getloadavg()[0]:.1f} at the end')
  with open(os.path.join(FLAGS.workdir, 'ablations_temporal.json'), 'w') as file:
    json.dump(record, file, indent=1)
  ablation_report.write_section(FLAGS.results, markdown(record), START, END)


if __name__ == '__main__':
  app.run(main)
