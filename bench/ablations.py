r"""The paper's ablations (Tables 1 and 3) at toy scale on `moving_digits`.

Builds on a quickstart run (`--base_run`, trained here if missing: the same
stages, sizes and steps as the README's main command,
`configs/moving_digits_quickstart.py`) and trains, once per seed (`--seeds` of
them from `--seed`), the Table 1 video variants from its image LDM:

  Table 1  image LDM sampled frame by frame (no temporal layers)
           pixel-space video model, no autoencoder, total parameters matched to ours
           video LDM trained end to end, no image pre-training (`^unet/` trainable)
           attention-only temporal layers (depth matched to our parameter count)
           conv3d + attention (ours)
           ours + context guidance (Eq. 4, s = --context_guidance)
  Table 3  image decoder vs temporally fine-tuned decoder on reconstructions;
           image upsampler vs video upsampler (x4, 32 -> 128 px) on test clips
           (the temporal decoder and video upsampler are trained per seed too)

Every sample of a seed's evaluation is drawn with that seed; tables show mean ±
sd over seeds and a paper direction counts only past twice the combined sd
(`bench/ablation_report.py`, `videoldm/evaluation/ablation_stats.py`).

Protocol (Table 1): each model continues the first frame of `--num_videos`
test clips (8 frames, stride 4) under its label; metrics compare them with the
real clips using the project's digit nets (FVD-md, FID-md; `evaluation/digits.py`)
and report identity consistency and frame-to-frame feature change.

  python bench/ablations.py --seeds=3 --workdir=/tmp/videoldm_ablations \
      [--base_run=/tmp/videoldm_quickstart] (--runlocal --steps_scale=0.1 for a smoke run)
  Writes the "Ablations" section of bench/RESULTS.md and `<workdir>/ablations.json`;
  each seed's metrics are kept in `<workdir>/seed<s>/metrics.json` (reused on a re-run).
"""

import json
import os
import platform
import re
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import ablation_report
from videoldm import config_utils
from videoldm import stages
from videoldm.data import pipeline
from videoldm.evaluation import digits
from videoldm.evaluation import metrics
from videoldm.pipelines import loading
from videoldm.train import chain
from videoldm.train import trainer
from videoldm.stages import latents
from videoldm.stages import upsampler as upsampler_stage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import moving_digits_quickstart  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/videoldm_ablations', 'Where runs are kept.')
_BASE_RUN = flags.DEFINE_string('base_run', None, 'A quickstart run to build on (trained here '
                                'if missing or unfinished); default <workdir>/base.')
_NUM_UPSAMPLE = flags.DEFINE_integer('num_upsample_videos', 16, 'Test clips per upsampler row.')
_SEED = flags.DEFINE_integer('seed', 0, 'First seed: runs and sampling use seed, seed + 1, ...')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'How many seeds each variant is trained with.')
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', 48, 'Test clips per evaluation.')
_STEPS_SCALE = flags.DEFINE_float('steps_scale', 1.0, 'Multiplies the video variants\' steps.')
_CONTEXT_GUIDANCE = flags.DEFINE_float('context_guidance', 1.5, 's of Eq. 4 for that row.')
_PIXEL_PATCH = flags.DEFINE_integer('pixel_patch_size', 4, 'Pixel-space row: the U-Net reads '
                                    'the frames as p x p patches (8x8x48 for 4, as our latents).')
_RUNLOCAL = flags.DEFINE_bool('runlocal', False, 'Every stage at `runlocal` size (a CPU minute '
                               'each): a smoke run of the whole script.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                  'Rewrite RESULTS.md from <workdir>/ablations.json; no runs.')
_RESULTS = flags.DEFINE_string('results', os.path.join(os.path.dirname(__file__), 'RESULTS.md'),
                               'Markdown file whose Ablations section is (re)written.')

BASE_STAGES = ('autoencoder', 'image', 'decoder', 'upsampler_image', 'upsampler')


def base_run() -> str:
  return _BASE_RUN.value or os.path.join(_WORKDIR.value, 'base')


def config_arg(prefix: str = '') -> str:
  return prefix + 'runlocal' if _RUNLOCAL.value else ''


def seed_dir(seed: int) -> str:
  return os.path.join(_WORKDIR.value, f'seed{seed}')


def video_steps() -> int:
  return max(2, int(moving_digits_quickstart.QUICKSTART_STEPS['video'] * _STEPS_SCALE.value))


def finished(workdir: str, steps: int) -> bool:
  return os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps)))


def video_config(seed: int, **overrides):
  """The quickstart's `video` stage config, from the base run's image LDM."""
  config = moving_digits_quickstart.get_config('stage=video' + config_arg(','))
  steps = video_steps()
  values = {'total_steps': steps, 'seed': seed,
            'optimizer.warmup_steps': max(1, steps // 10), 'log_every': max(1, steps // 5),
            'data.data_dir': os.path.join(base_run(), 'data'),
            'init_from.workdir': os.path.join(base_run(), 'image')}
  values.update(overrides)
  return config_utils.override(config, **values)


def train_video(seed: int, name: str, overrides: dict) -> str:
  """Trains one video variant into `<workdir>/seed<s>/video_<name>` unless done."""
  workdir = os.path.join(seed_dir(seed), f'video_{name}')
  if not finished(workdir, video_steps()):
    trainer.train_and_evaluate(video_config(seed, **overrides), workdir)
  return workdir


def table3_workdir(seed: int, stage: str) -> str:
  """The `decoder` / `upsampler` run of `seed`: the base run's for its own seed, else one
  trained here with the quickstart's config and that seed."""
  config = chain.stage_config(chain.quickstart_config_file(), stage, config_arg(), base_run())
  if seed == config.seed:
    return os.path.join(base_run(), chain.stage_dir(stage))
  workdir = os.path.join(seed_dir(seed), stage)
  if not finished(workdir, config.total_steps):
    trainer.train_and_evaluate(config_utils.override(config, seed=seed), workdir)
  return workdir


def parameter_counts(config) -> tuple[int, int]:
  """(parameters matching `config.trainable`, all parameters) of the video stage."""
  stage = stages.get_stage(config.stage)(config)
  batch = dict(video=jnp.zeros((1, config.data.num_frames, 32, 32, 3)),
               labels=jnp.zeros((1, 1), jnp.int32))
  shapes = jax.eval_shape(stage.init_params, jax.random.key(0), batch)
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  pattern = re.compile(config.trainable)
  join = lambda path: '/'.join(str(getattr(k, 'key', k)) for k in path)
  sizes = [(join(path), int(np.prod(leaf.shape))) for path, leaf in flat]
  return sum(n for path, n in sizes if pattern.search(path)), sum(n for _, n in sizes)


def pixel_overrides(widths) -> dict:
  """The pixel-space variant: no autoencoder, a U-Net on p x p patches, trained from scratch."""
  channels = 3 * _PIXEL_PATCH.value**2
  return {'model.pixel_patch_size': _PIXEL_PATCH.value, 'model.unet.in_channels': channels,
          'model.unet.out_channels': channels, 'model.unet.block_out_channels': tuple(widths),
          'trainable': r'^unet/', 'init_from.workdir': ''}


def pixel_widths(ours) -> tuple[int, ...]:
  """Ours' U-Net widths with the last one widened (multiples of 8) to match its total params."""
  widths = tuple(ours.model.unet.block_out_channels)
  target = parameter_counts(ours)[1]
  candidates = [widths[:-1] + (widths[-1] + 8 * k,) for k in range(-2, 5)]
  return min(candidates, key=lambda w: abs(
      parameter_counts(video_config(0, **pixel_overrides(w)))[1] - target))


def test_clips(data_config, num_videos: int | None = None) -> dict:
  """The first `--num_videos` test clips, numeric entries only (jittable)."""
  iterator = pipeline.make_dataset(data_config, 'test', num_videos or _NUM_VIDEOS.value,
                                   shuffle=False, seed=_SEED.value)
  return {k: v for k, v in next(iterator).items() if v.dtype != object}


def continue_clips(workdir: str, batch: dict, context_guidance: float, seed: int) -> np.ndarray:
  """The video model's continuation of each clip's first frame (label-conditioned)."""
  model = loading.load_stage(workdir)
  config = config_utils.override(model.stage.config, **{
      'sampling.context_guidance': context_guidance, 'sampling.num_context': 1})
  stage = type(model.stage)(config)
  sample = jax.jit(lambda p, b, k: stage.sample(p, b, k)['prediction'])
  return np.asarray(sample(model.params, batch, jax.random.key(seed)))


def frame_by_frame(workdir: str, batch: dict, seed: int) -> np.ndarray:
  """First frame reconstructed, then independent image-LDM samples of the clip's label."""
  model = loading.load_stage(workdir)
  stage, params = model.stage, model.params
  video = jnp.asarray(batch['video'])
  first = latents.decode_latents(stage.autoencoder, params,
                                latents.encode_video(stage.autoencoder, params, video[:, :1], None))
  sample = jax.jit(lambda k: stage.sample(params, dict(batch, video=video), k)['samples'][:, 0])
  frames = [first[:, 0]] + [sample(jax.random.fold_in(jax.random.key(seed), i))
                            for i in range(1, video.shape[1])]
  return np.clip(np.stack(frames, axis=1), -1, 1)


def decoder_rows(seed: int, nets) -> list:
  """Table 3: the image decoder vs the temporally fine-tuned decoder, same latents."""
  model = loading.load_stage(table3_workdir(seed, 'decoder'))
  clips = test_clips(model.stage.config.data)
  out = jax.jit(model.stage.sample)(model.params, clips, jax.random.key(seed))
  source = np.asarray(clips['video'])
  return [(title, metrics.digit_video_metrics(nets, np.asarray(out[key]), source,
                                              references=source))
          for title, key in (('Image decoder (frame-wise)', 'image_decoder'),
                             ('Temporally fine-tuned decoder', 'temporal_decoder'))]


def upsampler_rows(seed: int, nets) -> list:
  """Table 3: image vs video x4 upsampler on the same downsampled test clips."""
  workdirs = {'upsampler_image': os.path.join(base_run(), 'upsampler_image'),
              'upsampler': table3_workdir(seed, 'upsampler')}
  video_model = loading.load_stage(workdirs['upsampler'])
  clips = test_clips(video_model.stage.config.data, _NUM_UPSAMPLE.value)
  source = np.asarray(clips['video'])  # (b, f, 128, 128, 3)
  low_res = upsampler_stage.downsample(jnp.asarray(source), video_model.stage.options.scale)
  key = jax.random.key(seed)
  rows = []
  for title, name in (('Image upsampler (frame-wise)', 'upsampler_image'),
                      ('Video upsampler (temporal layers)', 'upsampler')):
    model = loading.load_stage(workdirs[name])
    stage, b, f = model.stage, source.shape[0], source.shape[1]
    frames = low_res if stage.temporal else low_res.reshape((b * f, 1) + low_res.shape[2:])
    up = jax.jit(lambda p, x, k, stage=stage: stage.upsample(p, x, k, stage.sampling_options()))(
        model.params, frames, key)
    up = np.asarray(up).reshape(source.shape)
    values = metrics.digit_video_metrics(nets, up, source, references=source)
    values['l1'] = float(np.abs(up - source).mean())
    rows.append((title, values))
  return rows


TABLE1_ROWS = (  # (title, variant, context guidance); None: the image LDM frame by frame.
    ('Image LDM, frame by frame (no temporal layers)', None, 0.0),
    ('Pixel-space video model (no autoencoder, params matched)', 'pixel', 1.0),
    ('End-to-end video LDM (no image pre-training)', 'end_to_end', 1.0),
    ('Attention-only temporal layers', 'attention_only', 1.0),
    ('Ours: conv3d + attention', 'ours', 1.0),
    ('Ours + context guidance (s={s})', 'ours', None),
)


def run_seed(seed: int, variants: dict, batch: dict, nets) -> dict:
  """Trains every variant with `seed` and evaluates it with `seed`: rows of Tables 1 and 3."""
  start = time.time()
  workdirs = {name: train_video(seed, name, overrides) for name, overrides in variants.items()}
  for stage in ('decoder', 'upsampler'):
    table3_workdir(seed, stage)
  timings = {'training': time.time() - start}
  start = time.time()
  real, labels = np.asarray(batch['video']), np.asarray(batch['labels'])[:, 0]
  table1 = [('Real test clips (reference)', metrics.digit_video_metrics(nets, real, real, labels))]
  for title, name, guidance in TABLE1_ROWS:
    if name is None:
      videos = frame_by_frame(os.path.join(base_run(), 'image'), batch, seed)
    else:
      guidance = _CONTEXT_GUIDANCE.value if guidance is None else guidance
      videos = continue_clips(workdirs[name], batch, guidance, seed)
    table1.append((title.format(s=_CONTEXT_GUIDANCE.value),
                   metrics.digit_video_metrics(nets, videos, real, labels)))
  table3 = decoder_rows(seed, nets) + upsampler_rows(seed, nets)
  timings['evaluation'] = time.time() - start
  return dict(table1=table1, table3=table3, timings=timings)


def merge_seeds(runs: list[dict], table: str) -> list:
  """Rows `[title, {metric: [value per seed]}]`, in the first run's order."""
  rows = []
  for index, (title, values) in enumerate(runs[0][table]):
    rows.append([title, {key: [float(run[table][index][1][key]) for run in runs]
                         for key, value in values.items() if isinstance(value, (int, float))}])
  return rows


def write_report(record) -> None:
  steps = dict(moving_digits_quickstart.QUICKSTART_STEPS, video=max(
      2, int(moving_digits_quickstart.QUICKSTART_STEPS['video'] * record['steps_scale'])))
  body = ablation_report.markdown(
      record, command=' '.join(['python bench/ablations.py'] + record['argv']), steps=steps,
      machine=f'{platform.machine()}, {os.cpu_count()} CPU cores (load average '
      f'{record.get("load_average", float("nan")):.1f} at the end), jax {jax.__version__} on '
      f'{jax.default_backend()}')
  ablation_report.write_section(_RESULTS.value, body)


def main(argv):
  del argv
  if _REPORT_ONLY.value:
    with open(os.path.join(_WORKDIR.value, 'ablations.json')) as file:
      record = json.load(file)
    write_report(record)
    return
  if _SEEDS.value < 1:
    raise ValueError(f'--seeds must be at least 1, got {_SEEDS.value}.')
  start = time.time()
  chain.train_all(base_run(), chain.quickstart_config_file(), config_arg(), stages=BASE_STAGES)
  timings = {'base run': time.time() - start}
  seeds = [_SEED.value + index for index in range(_SEEDS.value)]
  ours = video_config(seeds[0])
  ours_count = parameter_counts(ours)[0]
  attention_only = {'model.unet.temporal.layers': ('attention',)}
  depth = min(range(1, 9), key=lambda d: abs(parameter_counts(config_utils.override(
      ours, **attention_only, **{'model.unet.temporal.depth': d}))[0] - ours_count))
  widths = pixel_widths(ours)
  variants = {
      'ours': {},
      'attention_only': {**attention_only, 'model.unet.temporal.depth': depth},
      'end_to_end': {'trainable': r'^unet/', 'init_from.exempt': [r'^unet/'],
                     'init_from.ignore': [r'^unet/']},
      'pixel': pixel_overrides(widths),
  }
  counts = {name: parameter_counts(video_config(seeds[0], **overrides))
            for name, overrides in variants.items()}
  batch = test_clips(ours.data)
  spec = digits.spec_from_data_config(ours.data)
  nets = digits.load_or_train(spec, os.path.join(_WORKDIR.value, 'feature_nets'), seed=0)

  runs = []
  for index, seed in enumerate(seeds):
    path = os.path.join(seed_dir(seed), 'metrics.json')  # Kept: a re-run skips the seed.
    if not os.path.isfile(path):
      logging.info('=== Ablations, seed %d (%d of %d) ===', seed, index + 1, len(seeds))
      run = run_seed(seed, variants, batch, nets)
      with open(path, 'w') as file:
        json.dump(run, file, indent=1, default=float)
    with open(path) as file:  # Plain JSON numbers, whatever the metrics' dtypes.
      runs.append(json.load(file))
  for seed, run in zip(seeds, runs):
    timings.update({f'seed {seed} {name}': seconds for name, seconds in run['timings'].items()})

  table1 = merge_seeds(runs, 'table1')
  for (_, values), (_, name, _) in zip(table1[1:], TABLE1_ROWS):
    values['trainable_params'], values['total_params'] = counts.get(name, (0, None))
  record = dict(table1=table1, table3=merge_seeds(runs, 'table3'), timings=timings,
                total_seconds=time.time() - start, feature_nets=nets.record, seeds=seeds,
                steps_scale=_STEPS_SCALE.value, attention_only_depth=depth,
                num_videos=_NUM_VIDEOS.value,
                pixel=dict(patch_size=_PIXEL_PATCH.value, block_out_channels=widths),
                argv=sys.argv[1:], load_average=os.getloadavg()[0])
  with open(os.path.join(_WORKDIR.value, 'ablations.json'), 'w') as file:
    json.dump(record, file, indent=1, default=float)
  write_report(record)
  logging.info('Ablations done in %.0f s.', record['total_seconds'])


if __name__ == '__main__':
  app.run(main)
