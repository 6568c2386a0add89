r"""The README's quickstart: every `moving_digits` stage, trained on a 2-core CPU in ~20 minutes.

`configs/moving_digits.py`'s full-size config of a stage with the quickstart's overrides
(`overrides(stage)`): fewer steps at higher learning rates, a narrower autoencoder, no
per-stage samples or checkpoints, and sampling settings tuned on the quickstart's models.
`runlocal` then shrinks it as it shrinks moving_digits (a CPU minute per stage).

  python -m videoldm.quickstart --workdir=/tmp/videoldm_quickstart

trains every stage in order with this config and samples a video; one stage alone:

  python -m videoldm.main \
    --config=configs/moving_digits_quickstart.py:stage=video \
    --workdir=/tmp/videoldm_quickstart/video \
    --config.init_from.workdir=/tmp/videoldm_quickstart/image
"""

import functools
import os

from videoldm import config_utils


moving_digits = config_utils.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'moving_digits.py'))

# Train steps per stage (batch 8 on a 2-core CPU), for the whole run's time budget
# (bench/HISTORY.md, "Quickstart: a narrower autoencoder").
QUICKSTART_STEPS = dict(autoencoder=1200, image=2400, video=200, interpolation=120, decoder=60,
                        upsampler_image=600, upsampler=60)


def overrides(stage: str) -> dict:
  """The quickstart's values of `stage`, by dotted key of moving_digits' config."""
  steps = QUICKSTART_STEPS[stage]
  values = {
      'total_steps': steps, 'batch_size': 8,
      # One final video instead of per-stage samples; one checkpoint, at the end.
      'eval_every': 0, 'sample_every': 0, 'checkpoint.every_steps': 0,
      'optimizer.lr': 5e-4, 'optimizer.warmup_steps': steps // 10,
      # Short runs: an EMA this short still smooths the last steps (bench/HISTORY.md,
      # "Quickstart image LDM: attention at 8x8, EMA decay").
      'ema_decay': 0.98,
      # A narrower autoencoder, shared by every stage of a run: faster, and better
      # reconstructions (bench/HISTORY.md, "Quickstart: a narrower autoencoder").
      'model.autoencoder.block_out_channels': (16, 32, 64),
      'sampling.num_steps': 25,
      # Label CFG 6 (sampling only): more recognisable digits than 2 (bench/HISTORY.md,
      # "Figure 7 re-measured: image LDM lr, Min-SNR, class embeddings, label guidance 6").
      'sampling.guidance_scale': 6.0,
  }
  if stage in ('autoencoder', 'image', 'upsampler_image'):  # From scratch: higher lr.
    values.update({'optimizer.lr': 1e-3, 'optimizer.warmup_steps': 50})
  if stage == 'autoencoder':
    # 1e-3 leaves the narrow autoencoder's colours unlearnt; the 2D patch GAN (disc_start at
    # the end: none) costs more time than it is worth here (bench/HISTORY.md, "Quickstart: a
    # narrower autoencoder").
    values.update({'optimizer.lr': 2e-3, 'model.loss.disc_start': steps})
  if stage == 'image':  # 32 single frames: 32 different digits per step, not 8.
    values.update({'batch_size': 32, 'data.num_frames': 1, 'data.frame_stride': 1})
    # lr 2e-3 and Min-SNR-5 weighting (below): recognisable digits (bench/HISTORY.md,
    # "Quickstart image LDM: why the digits were not recognisable").
    values['optimizer.lr'] = 2e-3
  if stage in ('image', 'video', 'interpolation'):
    # Min-SNR-5 weighting: the prediction model copies the digits' colour better
    # (bench/HISTORY.md, "Quickstart: digit colour across key frames").
    values['diffusion.loss_weighting'] = 'min_snr'
  if stage in ('video', 'interpolation'):  # New temporal layers, from zero outputs.
    # lr 2e-3 (bench/HISTORY.md, "Quickstart video model: why the digits changed colour and
    # shape"); with the context in the temporal branch, context guidance 5 (Eq. 4) keeps the
    # digits' identity (bench/HISTORY.md, "Quickstart video model: the context inside the
    # temporal branch").
    values.update({'optimizer.lr': 2e-3, 'sampling.context_guidance': 5.0})
  if stage in ('image', 'video'):
    # Stochastic DDIM (eta 1) corrects these short-trained models' errors as it goes, and
    # then the prediction model takes context guidance 8; interpolation stays deterministic
    # (bench/HISTORY.md, "Quickstart sampling: stochastic DDIM and context guidance").
    values['sampling.eta'] = 1.0
  if stage == 'video':
    values['sampling.context_guidance'] = 8.0
  if stage.startswith('upsampler'):  # Conditioned on the low-res frames: few steps do.
    values['sampling.num_steps'] = 5  # (bench/HISTORY.md, "Quickstart: a narrower autoencoder").
  return values


def get_config(arg=None):
  """`arg`: stage=<name>, runlocal (a CPU minute each)."""
  arg = config_utils.parse_arg(arg, stage='video', runlocal=False)
  config = moving_digits.get_config(f'stage={arg.stage}')
  for dotted, value in overrides(arg.stage).items():
    *parents, name = dotted.split('.')
    node = functools.reduce(getattr, parents, config)
    if name not in node:
      raise ValueError(f'Quickstart override {dotted!r} names no field of moving_digits.')
    node[name] = value
  if arg.runlocal:
    moving_digits.shrink_to_cpu(config)
  return config
