r"""Evaluates a trained run: `python -m videoldm.evaluate --workdir=<run> [networks]`.

`<run>` holds one workdir per stage (`image`, `video`, optionally
`interpolation`, `decoder`), as the quickstart or `train_chain` lays it out
(or an exported folder). For each of `--num_videos` real clips of the video
stage's evaluation split (`--num_frames` frames at `--frame_stride`, both
defaulting to the FVD protocol's 16 frames at the video stage's stride) it
generates one video under the clip's label, or its caption for text runs,
batch by batch, and writes `<run>/evaluation/report.json` plus TensorBoard
scalars in `<run>/evaluation`.

Metrics (`evaluation/standard.py`): FID with `--inception_weights`, FVD with
`--i3d_weights`, video IS with `--c3d_weights` (`.npz` files converted once by
`python -m videoldm.convert.feature_networks`), CLIP similarity (mean raw
cosine) with `--clip_dir` (a local transformers CLIPModel folder). Real FID /
FVD statistics are stored once with their protocol in
`<run>/evaluation/real_<metric>.npz` and reused only under the same one
(`evaluation/protocol.py`); the report records every protocol. On
`moving_digits` the project's digit nets add FID-md, FVD-md, identity
consistency, label agreement and feature change (`evaluation/digits.py`).
"""

import copy
import os
import time

from absl import app
from absl import flags
from absl import logging
from clu import metric_writers
import numpy as np

from videoldm import checkpoints
from videoldm import host_devices
from videoldm import logs
from videoldm import outputs
from videoldm.data import pipeline
from videoldm.evaluation import digits
from videoldm.evaluation import metrics
from videoldm.evaluation import protocol as protocol_lib
from videoldm.evaluation import report
from videoldm.evaluation import standard
from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory with one folder per stage.',
                               required=True)
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', protocol_lib.NUM_VIDEOS,
                                   'Videos to generate and compare.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', protocol_lib.NUM_FRAMES, 'Frames per clip.')
_STRIDE = flags.DEFINE_integer('frame_stride', None,
                               'Real clips\' frame stride (default: the video stage\'s).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Videos generated per sampling call.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling and data seed.')
_INCEPTION = flags.DEFINE_string('inception_weights', '', 'Inception-v3 .npz (adds FID).')
_I3D = flags.DEFINE_string('i3d_weights', '', 'I3D .npz (adds FVD).')
_C3D = flags.DEFINE_string('c3d_weights', '', 'C3D .npz (adds video IS).')
_IS_SPLITS = flags.DEFINE_integer('is_splits', 1, 'Parts IS is computed over (mean, std).')
_CLIP = flags.DEFINE_string('clip_dir', '', 'Local CLIPModel folder (adds CLIP similarity).')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None,
                                'Label CFG scale (default: the run\'s configs).')
_ETA = flags.DEFINE_float('eta', None, 'DDIM eta (0 = deterministic; default: the run\'s configs).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing evaluation report.')


def generate(models: dict, labels: np.ndarray, num_frames: int, batch_size: int,
             seed: int, guidance_scale: float | None = None,
             eta: float | None = None, prompts=None) -> np.ndarray:
  """Videos `(n, num_frames, H, W, 3)` from the stack, `batch_size` labels (or `prompts`,
  text runs) at a time.

  `guidance_scale` (label or text CFG) and `eta` (DDIM) apply to every stage;
  None keeps each stage's config.
  """
  videos = []
  for start in range(0, len(labels), batch_size):
    chunk = tuple(int(label) for label in labels[start:start + batch_size])
    texts = tuple(prompts[start:start + batch_size]) if prompts is not None else ()
    settings = video_ldm.Settings(num_frames=num_frames, labels=chunk, seed=seed + start,
                                  interpolation_passes=0, guidance_scale=guidance_scale,
                                  eta=eta, prompts=texts)
    frames = list(video_ldm.VideoLDM(models, settings).frames())
    videos.append(np.stack([np.asarray(frame) for frame in frames], axis=1))
  return np.concatenate(videos)


def eval_data_config(data_config, num_frames: int, frame_stride: int | None):
  """The video stage's data config at the evaluation's clip length and stride."""
  data_config = copy.deepcopy(data_config)
  data_config.num_frames = num_frames
  data_config.frame_stride = frame_stride or data_config.frame_stride
  return data_config


def evaluate(run_dir: str, num_videos: int = protocol_lib.NUM_VIDEOS,
             num_frames: int = protocol_lib.NUM_FRAMES, frame_stride: int | None = None,
             batch_size: int = 8, seed: int = 0,
             networks: standard.Networks = standard.Networks(), is_splits: int = 1,
             guidance_scale: float | None = None, eta: float | None = None,
             overwrite: bool = False) -> dict:
  """The report dict (also written to `<run_dir>/evaluation/report.json` and TensorBoard).

  An existing report is refused (before any work) unless `overwrite`.
  """
  if num_videos < 2:
    raise ValueError(f'num_videos={num_videos} must be >= 2 (Fréchet distances need a spread).')
  report_path = os.path.join(run_dir, 'evaluation', 'report.json')
  outputs.check_output(report_path, overwrite)
  start = time.time()
  models = loading.load_run(run_dir, names=('image', 'video', 'decoder'), required=('video',))
  text = models['video'].stage.text_conditioned
  data_config = eval_data_config(models['video'].stage.config.data, num_frames, frame_stride)
  output = os.path.join(run_dir, 'evaluation')
  source = f'{data_config.get("source") or data_config.name} {data_config.eval_split}'
  resolution = (data_config.image_size, data_config.image_width or data_config.image_size)
  scores = standard.StandardMetrics(networks, output, source, num_videos, num_frames,
                                    data_config.frame_stride, resolution, is_splits)
  digit_data = data_config.name == 'moving_digits' and not text
  kept = {'generated': [], 'real': [], 'labels': []}
  batches = pipeline.make_dataset(data_config, data_config.eval_split, batch_size,
                                  shuffle=False, seed=seed)
  for first in range(0, num_videos, batch_size):
    batch = next(batches)
    count = min(batch_size, num_videos - first)
    real = np.asarray(batch['video'])[:count]
    labels = np.asarray(batch['labels'])[:count, 0] if 'labels' in batch else np.zeros(count)
    captions = list(batch['caption_text'][:count]) if 'caption_text' in batch else None
    if text and captions is None:
      raise ValueError(f'Text run {run_dir!r}: its evaluation data {source!r} has no captions.')
    generated = generate(models, labels, num_frames, batch_size, seed + first, guidance_scale,
                         eta, prompts=captions if text else None)
    scores.add(generated, real, captions)
    if digit_data:
      for key, value in (('generated', generated), ('real', real), ('labels', labels)):
        kept[key].append(value)
  results, protocols = scores.results()
  record_nets = None
  if digit_data:
    nets = digits.load_or_train(digits.spec_from_data_config(data_config),
                                os.path.join(output, 'feature_nets'), seed=0)
    kept = {key: np.concatenate(value) for key, value in kept.items()}
    results.update(metrics.digit_video_metrics(nets, kept['generated'], kept['real'],
                                               kept['labels']))
    record_nets = nets.record
  results['seconds'] = time.time() - start
  record = dict(metrics=results, protocols=protocols, run=run_dir, num_videos=num_videos,
                seed=seed, guidance_scale=guidance_scale, eta=eta, feature_nets=record_nets)
  report.write_json(report_path, record)
  writer = metric_writers.create_default_writer(output)
  step = int(os.path.basename(checkpoints.latest_step_dir(os.path.join(run_dir, 'video'))))
  report.write_scalars(writer, step, results, prefix='eval/')
  writer.close()
  logging.info('Evaluation of %s: %s', run_dir, results)
  return record


def main(argv):
  del argv
  host_devices.keep_freed_memory()
  host_devices.use_one_device_per_core()  # Sampling splits the videos over the cores.
  logs.quiet_libraries()
  networks = standard.Networks(_INCEPTION.value, _I3D.value, _C3D.value, _CLIP.value)
  evaluate(_WORKDIR.value, _NUM_VIDEOS.value, _NUM_FRAMES.value, _STRIDE.value, _BATCH.value,
           _SEED.value, networks, _IS_SPLITS.value, _GUIDANCE.value, _ETA.value, _OVERWRITE.value)


if __name__ == '__main__':
  app.run(main)
