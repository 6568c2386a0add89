r"""Evaluates a trained run: `python -m videoldm.evaluate --workdir=<run> --num_videos=N`.

`<run>` holds one workdir per stage (`image`, `video`, optionally
`interpolation`, `decoder`, `upsampler`), as the quickstart lays it out.
Generates N videos with the sampling stack (labels of N test clips, first
frame from the image LDM, then the prediction model), compares them with the
N real test clips at the video stage's frame rate and writes
`<run>/evaluation/report.json` plus TensorBoard scalars in `<run>/evaluation`.

Metrics: FID-md, FVD-md, identity consistency, label agreement, feature
change (digit nets trained by the project, `evaluation/digits.py`); FID / FVD
with `--inception_weights` / `--i3d_weights` (.npz, `evaluation/weights.py`),
whose real statistics are stored once with their protocol in
`<run>/evaluation/real_<metric>.npz` and reused only under the same one
(`evaluation/protocol.py`); CLIP similarity with `--clip_dir` (a local
transformers CLIPModel folder), the mean raw cosine.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
from clu import metric_writers
import einops
import numpy as np

from videoldm import checkpoints
from videoldm import host_devices
from videoldm import logs
from videoldm import outputs
from videoldm.data import pipeline
from videoldm.evaluation import clip_score
from videoldm.evaluation import digits
from videoldm.evaluation import frechet
from videoldm.evaluation import i3d
from videoldm.evaluation import inception
from videoldm.evaluation import metrics
from videoldm.evaluation import protocol as protocol_lib
from videoldm.evaluation import report
from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory with one folder per stage.',
                               required=True)
_NUM_VIDEOS = flags.DEFINE_integer('num_videos', 32, 'Videos to generate and compare.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Videos generated per sampling call.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling and data seed.')
_INCEPTION = flags.DEFINE_string('inception_weights', '', 'Inception-v3 .npz (adds FID).')
_I3D = flags.DEFINE_string('i3d_weights', '', 'I3D .npz (adds FVD).')
_CLIP = flags.DEFINE_string('clip_dir', '', 'Local CLIPModel folder (adds CLIP similarity).')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None,
                                'Label CFG scale (default: the run\'s configs).')
_ETA = flags.DEFINE_float('eta', None, 'DDIM eta (0 = deterministic; default: the run\'s configs).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing evaluation report.')


def real_clips(data_config, num_videos: int, seed: int) -> dict:
  iterator = pipeline.make_dataset(data_config, 'test', num_videos, shuffle=False, seed=seed)
  return next(iterator)


def generate(models: dict, labels: np.ndarray, num_frames: int, batch_size: int,
             seed: int, guidance_scale: float | None = None,
             eta: float | None = None) -> np.ndarray:
  """Videos `(n, num_frames, H, W, 3)` from the stack, `batch_size` labels at a time.

  `guidance_scale` (label CFG) and `eta` (DDIM) apply to every stage; None keeps
  each stage's config.
  """
  videos = []
  for start in range(0, len(labels), batch_size):
    chunk = tuple(int(label) for label in labels[start:start + batch_size])
    settings = video_ldm.Settings(num_frames=num_frames, labels=chunk, seed=seed + start,
                                  interpolation_passes=0, guidance_scale=guidance_scale,
                                  eta=eta)
    frames = list(video_ldm.VideoLDM(models, settings).frames())
    videos.append(np.stack([np.asarray(frame) for frame in frames], axis=1))
  return np.concatenate(videos)


def standard_metric(metric: str, weights_path: str, features, generated, real, data_config,
                    output: str) -> tuple[float, dict]:
  """(Fréchet distance, its protocol): the real statistics are computed once and stored in
  `<output>/real_<metric>.npz`; later runs reuse them only under the same protocol."""
  source = f'{data_config.get("source") or data_config.name} test'
  protocol = protocol_lib.Protocol(metric, protocol_lib.network_id(weights_path), source,
                                   int(real.shape[0]), int(real.shape[1]),
                                   int(data_config.frame_stride), tuple(real.shape[2:4]))
  path = os.path.join(output, f'real_{metric}.npz')
  if os.path.isfile(path):
    mu, sigma = protocol_lib.load_stats(path, protocol)
  else:
    mu, sigma = protocol_lib.save_stats(path, features(real), protocol)
  distance = frechet.frechet_distance_from_stats(*protocol_lib.statistics(features(generated)),
                                                 mu, sigma)
  return distance, protocol.to_json()


def evaluate(run_dir: str, num_videos: int, batch_size: int = 8, seed: int = 0,
             inception_weights: str = '', i3d_weights: str = '', clip_dir: str = '',
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
  models = loading.load_run(run_dir, names=('image', 'video', 'decoder'))
  data_config = models['video'].stage.config.data
  batch = real_clips(data_config, num_videos, seed)
  real, labels = np.asarray(batch['video']), np.asarray(batch['labels'])[:, 0]
  generated = generate(models, labels, real.shape[1], batch_size, seed, guidance_scale, eta)
  output = os.path.join(run_dir, 'evaluation')
  nets = digits.load_or_train(digits.spec_from_data_config(data_config),
                              os.path.join(output, 'feature_nets'), seed=0)
  results = metrics.digit_video_metrics(nets, generated, real, labels)
  protocols = {}
  if inception_weights:
    extractor = inception.InceptionExtractor(inception_weights)
    frames = lambda v: einops.rearrange(extractor.frame_features(v), 'b f d -> (b f) d')
    results['fid'], protocols['fid'] = standard_metric(
        'fid', inception_weights, frames, generated, real, data_config, output)
  if i3d_weights:
    extractor = i3d.I3DExtractor(i3d_weights)
    results['fvd'], protocols['fvd'] = standard_metric(
        'fvd', i3d_weights, extractor.clip_features, generated, real, data_config, output)
  if clip_dir:
    captions = [f'a handwritten digit {int(label)}' for label in labels]
    results['clip_similarity'] = clip_score.clip_similarity(generated, captions, clip_dir)
  results['seconds'] = time.time() - start
  record = dict(metrics=results, protocols=protocols, run=run_dir, num_videos=num_videos, seed=seed,
                guidance_scale=guidance_scale, eta=eta, feature_nets=nets.record)
  report.write_json(report_path, record)
  writer = metric_writers.create_default_writer(output)
  step = int(os.path.basename(checkpoints.latest_step_dir(
      os.path.join(run_dir, 'video'))))
  report.write_scalars(writer, step, results, prefix='eval/')
  writer.close()
  logging.info('Evaluation of %s: %s', run_dir, results)
  return record


def main(argv):
  del argv
  host_devices.use_one_device_per_core()  # Sampling splits the videos over the cores.
  logs.quiet_libraries()
  evaluate(_WORKDIR.value, _NUM_VIDEOS.value, _BATCH.value, _SEED.value, _INCEPTION.value,
           _I3D.value, _CLIP.value, _GUIDANCE.value, _ETA.value, _OVERWRITE.value)


if __name__ == '__main__':
  app.run(main)
