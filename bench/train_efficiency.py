"""Figures 2 and 3: train-step MFU, and temporal-only vs full fine-tuning.

Figure 2: the `video` stage step (temporal layers trained, spatial U-Net and
autoencoder frozen) at a CPU-sized config. Model FLOPs per step are counted
from the step's jaxpr (every conv, matmul and attention einsum, forward and
backward; `train_setup.jaxpr_flops`) and cross-checked with XLA's cost
analysis of the compiled step. MFU = FLOPs / median step time / the machine's
matmul throughput, measured interleaved with the step in the same run. On a
GPU pass `--dtype=bfloat16` (compute dtype; trainable params stay float32, frozen
ones are held in bf16).

Figure 3: the same video U-Net trained temporal-only (`config.trainable` =
temporal regex) vs fully (`^unet/`): compiled FLOPs, optimiser-state bytes and
step time. `--paper_scale` adds the jaxpr FLOP ratio of the paper-size U-Nets
('driving', 'sd_video'; forward + backward of the U-Net, no compile).

  python bench/train_efficiency.py [--batch=4] [--channels=64,128] [--repeats=5] [--paper_scale]
"""

import argparse

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--threads', type=int, default=0, help='0 = all cores')
PARSER.add_argument('--batch', type=int, default=4)
PARSER.add_argument('--frames', type=int, default=8)
PARSER.add_argument('--image_size', type=int, default=32)
PARSER.add_argument('--channels', default='64,128')
PARSER.add_argument('--dtype', default='float32')
PARSER.add_argument('--repeats', type=int, default=5)
PARSER.add_argument('--matmul_size', type=int, default=1024)
PARSER.add_argument('--figures', default='2,3')
PARSER.add_argument('--conv_kernel', default='3,1,1', help='temporal conv (f, h, w)')
PARSER.add_argument('--paper_scale', action='store_true',
                    help='also count figure 3 FLOPs (jaxpr, no run) for the paper-size U-Nets')
ARGS = PARSER.parse_args()
if ARGS.threads:
  common.configure_cpu_threads(ARGS.threads)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import train_setup  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.models import params as params_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.stages import latents  # pylint: disable=g-import-not-at-top,wrong-import-position

TEMPORAL = r'^unet/.*' + params_lib.TEMPORAL_PATTERN


def setup(trainable):
  config = train_setup.video_config(
      ARGS.batch, tuple(int(c) for c in ARGS.channels.split(',')), trainable, ARGS.dtype,
      ARGS.frames, ARGS.image_size,
      **{'model.unet.temporal.conv_kernel_size': tuple(int(k) for k in ARGS.conv_kernel.split(','))})
  state, step, batch = train_setup.build_step(config)
  analytic = train_setup.jaxpr_flops(jax.make_jaxpr(step)(state, batch))
  # The frozen autoencoder's encode runs in both steps (forward only): counted
  # apart so the U-Net's own ratio can be read off.
  autoencoder = stages.get_stage(config.stage)(config).autoencoder
  encode = lambda params, video: latents.encode_video(autoencoder, params, video,
                                                     jax.random.key(0))
  encode_flops = train_setup.jaxpr_flops(jax.make_jaxpr(encode)(state.params, batch['video']))
  compiled = step.lower(state, batch).compile()
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], batch)
    return metrics['loss']

  opt_bytes = train_setup.tree_bytes(state.opt_state)
  trainable_count = train_setup.tree_size(state.ema_params) if state.ema_params is not None else 0
  return dict(run=run, analytic=analytic, encode=encode_flops, xla=common.compiled_flops(compiled),
              opt_bytes=opt_bytes, trainable=trainable_count,
              total=train_setup.tree_size(state.params))


def main():
  figures = set(ARGS.figures.split(','))
  temporal = setup(TEMPORAL)
  fns = {'temporal': temporal['run']}
  full = None
  if '3' in figures:
    full = setup(r'^unet/')
    fns['full'] = full['run']
  mm_dtype = 'bfloat16' if ARGS.dtype == 'bfloat16' else 'float32'
  matmul, matmul_flops = common.matmul_chain(mm_dtype, ARGS.matmul_size)
  fns['matmul'] = matmul
  times = common.interleaved(fns, ARGS.repeats, warmup=2)
  peak = matmul_flops / common.median(times['matmul'])
  step_time = common.median(times['temporal'])
  size = f'batch {ARGS.batch} x {ARGS.frames} frames {ARGS.image_size}x{ARGS.image_size}'
  notes = [f'video stage, U-Net channels {ARGS.channels}, temporal conv ({ARGS.conv_kernel}), {size}, compute {ARGS.dtype}; '
           f'median (min-max) of {ARGS.repeats} interleaved runs; '
           f'{mm_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s '
           f'({ARGS.matmul_size}^3 matmul chain, {common.spread(times["matmul"])})']
  if '2' in figures:
    xla = temporal['xla']
    rows = [['temporal-only video step', common.spread(times['temporal']),
             f'{temporal["analytic"] / 1e9:.2f}',
             'n/a' if xla is None else f'{xla / 1e9:.2f}',
             f'{temporal["analytic"] / step_time / 1e9:.1f}',
             f'{100 * temporal["analytic"] / step_time / peak:.1f}%']]
    common.report('Figure 2: train-step MFU',
                  ['step', 'time', 'GFLOP (jaxpr)', 'GFLOP (XLA cost)', 'GFLOP/s', 'MFU'],
                  rows, notes)
  if full is not None:
    rows = []
    for name, case in (('temporal-only', temporal), ('full fine-tune', full)):
      flops = case['xla'] if case['xla'] is not None else case['analytic']
      rows.append([name, f'{case["trainable"]:,} / {case["total"]:,}',
                   f'{case["opt_bytes"] / 2**20:.2f} MiB', f'{flops / 1e9:.2f}',
                   f'{case["analytic"] / 1e9:.2f}', common.spread(times[name.split()[0].split('-')[0]])])
    ratio_xla = (temporal['xla'] / full['xla']) if temporal['xla'] and full['xla'] else float('nan')
    ratio_analytic = temporal['analytic'] / full['analytic']
    ratio_unet = ((temporal['analytic'] - temporal['encode']) /
                  (full['analytic'] - full['encode']))
    time_ratio = step_time / common.median(times['full'])
    notes3 = notes + [f'temporal / full: XLA FLOPs {ratio_xla:.3f}x, jaxpr FLOPs '
                      f'{ratio_analytic:.3f}x, optimiser state '
                      f'{temporal["opt_bytes"] / full["opt_bytes"]:.3f}x, step time '
                      f'{time_ratio:.3f}x',
                      f'U-Net alone (jaxpr FLOPs less the frozen encode, '
                      f'{temporal["encode"] / 1e9:.2f} GFLOP in both): {ratio_unet:.3f}x']
    common.report('Figure 3: frozen-spatial saving',
                  ['training', 'trainable / all params', 'optimiser state', 'GFLOP (XLA cost)',
                   'GFLOP (jaxpr)', 'step time'], rows, notes3)
  if ARGS.paper_scale:
    paper_scale_rows()


def paper_scale_rows():
  """Figure 3 at the paper's sizes: U-Net forward + backward FLOPs, temporal-only / full."""
  rows = []
  for variant, height, width in (('driving', 16, 32), ('sd_video', 40, 64)):
    temporal_flops, full_flops = (
        train_setup.unet_gradient_flops(variant, ARGS.frames, height, width, temporal_only)
        for temporal_only in (True, False))
    rows.append([variant, f'{ARGS.frames} x {height}x{width}', f'{temporal_flops / 1e12:.2f}',
                 f'{full_flops / 1e12:.2f}', f'{temporal_flops / full_flops:.3f}x'])
  common.report('Figure 3 at paper scale (jaxpr FLOPs, U-Net only)',
                ['U-Net', 'latents', 'TFLOP temporal-only', 'TFLOP full', 'ratio'], rows,
                ['batch 1; (3, 1, 1) temporal convs as the configs; floor (2 + x) / 3 for a '
                 'temporal share x of the forward FLOPs'])


if __name__ == '__main__':
  main()
