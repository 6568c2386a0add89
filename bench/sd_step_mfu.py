"""The `text_video` train step of `configs/sd_video.py` at its paper size: time, FLOPs, MFU.

The stage is built from the config with random weights (no SD folder; a tiny
tokenizer for the empty prompt): SD 1.5 U-Net widths 320/640/1280/1280 plus the
temporal layers, 16 frames of 40x64 latents (320x512 frames), remat on every
block, bf16 compute, the trainer's own jitted, donated step
(`train_step.make_train_step`). Inputs are cached latents and CLIP contexts
(`videoldm.cache`'s batch; `--inputs=pixels` encodes 320x512 frames and
captions inside the step instead). One row per mode x attention x remat policy:

  mode       temporal (`config.trainable`: the paper's setting) or full (`^unet/`)
  compile    seconds to trace, lower and compile the step (no compile: `--lower_only`)
  step       median (min-max) of `--repeats` calls after two warm-up calls
  TFLOP      model: convs and matmuls of the step's jaxpr without remat, XLA
             attention (the same count for every row of a mode); executed: the
             row's own jaxpr, remat recompute included (fused cuDNN attention is
             a custom call and not counted there); XLA: the compiled step's cost
             analysis (on GPU it omits cuBLAS / cuDNN custom calls)
  MFU, HFU   model / executed FLOPs per second over the bf16 matmul peak, measured
             in the same run (`--matmul_size`^3 chain, interleaved with the steps)
  memory     the compiled step's memory analysis: arguments + outputs +
             temporaries - aliased (donated) bytes; a row that would not fit the
             device is compiled but not run

MFU counts the jaxpr's FLOPs, not XLA's: XLA's GPU cost analysis leaves out the
cuBLAS / cuDNN calls that carry the convolutions and matmuls (bench/RESULTS.md, "GPU").

`--size=tiny` is a CPU-sized check of the same path. `--lower_only` traces (and
with `--compile` compiles) the step on abstract state: FLOPs and memory without
allocating the params.

  python bench/sd_step_mfu.py [--size=paper|tiny] [--modes=temporal,full] [--batch=1]
      [--remat_policies=nothing_saveable,dots_saveable] [--attention=config,cudnn]
      [--inputs=latents|pixels] [--repeats=5] [--lower_only [--compile]]
"""

import argparse
import functools
import os
import sys
import tempfile
import time

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--size', default='paper', choices=('paper', 'tiny'))
PARSER.add_argument('--modes', default='temporal,full')
PARSER.add_argument('--batch', type=int, default=1, help='videos per step (one device)')
PARSER.add_argument('--frames', type=int, default=0, help='0: the config (16) or tiny (4)')
PARSER.add_argument('--remat_policies', default='config',
                    help="jax.checkpoint_policies names; 'config' = the config's, 'off' = no remat")
PARSER.add_argument('--attention', default='config',
                    help="U-Net attention implementations: config, auto, xla, cudnn, blocked")
PARSER.add_argument('--dtype', default='', help="U-Net compute dtype; '' = the config's")
PARSER.add_argument('--inputs', default='latents', choices=('latents', 'pixels'))
PARSER.add_argument('--repeats', type=int, default=5)
PARSER.add_argument('--matmul_size', type=int, default=0, help='0: 8192 on GPU, 512 on CPU')
PARSER.add_argument('--threads', type=int, default=0, help='0 = all cores')
PARSER.add_argument('--lower_only', action='store_true', help='abstract state, nothing run')
PARSER.add_argument('--compile', action='store_true', help='with --lower_only: also compile')
ARGS = PARSER.parse_args()
if ARGS.threads:
  common.configure_cpu_threads(ARGS.threads)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

import train_setup

from videoldm import config_utils
from videoldm import stages
from videoldm.convert import tiny_sd
from videoldm.train import sharding as sharding_lib
from videoldm.train import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(common.REPO, 'configs', 'sd_video.py')
TRAINABLE = {'temporal': None, 'full': r'^unet/'}  # None: the config's temporal regex.
GIB = 2.0**30
# A CPU-sized U-Net, CLIP and VAE (f=2) in the same stage and step.
TINY = {
    'model.frame_size': (16, 32), 'data.image_size': 16, 'data.image_width': 32,
    'model.unet.block_out_channels': (32, 64), 'model.unet.layers_per_block': 1,
    'model.unet.attention_levels': (True, False), 'model.unet.num_attention_heads': (2, 4),
    'model.unet.transformer_layers_per_block': (1, 1), 'model.unet.cross_attention_dim': 32,
    'model.unet.norm_num_groups': 8,
    'model.text_encoder.vocab_size': len(tiny_sd.tokenizer_vocab()),
    'model.text_encoder.hidden_size': 32, 'model.text_encoder.intermediate_size': 64,
    'model.text_encoder.num_hidden_layers': 1, 'model.text_encoder.num_attention_heads': 4,
    'model.text_encoder.max_position_embeddings': tiny_sd.MAX_LENGTH,
    'model.text_encoder.projection_dim': 32, 'model.autoencoder.block_out_channels': (32, 32),
    'model.autoencoder.norm_num_groups': 8,
}


@functools.cache
def tokenizer_dir() -> str:
  """A tiny CLIP tokenizer: the step tokenizes only the empty prompt (caption dropout)."""
  path = tempfile.mkdtemp(prefix='sd_step_mfu_tokenizer_')
  tiny_sd.write_tokenizer(path)
  return path


def stage_config(mode: str, policy: str, attention: str):
  """`configs/sd_video.py:stage=text_video` for one row (`policy` 'off': no remat)."""
  config = config_utils.load_config(f'{CONFIG}:stage=text_video')
  settings = {'batch_size': ARGS.batch, 'model.tokenizer_path': tokenizer_dir()}
  if ARGS.size == 'tiny':
    settings.update(TINY, **{'data.num_frames': 4})
  if ARGS.frames:
    settings['data.num_frames'] = ARGS.frames
  if policy == 'off':
    settings['model.remat'] = ''
  elif policy != 'config':
    settings['model.remat_policy'] = policy
  if attention != 'config':
    settings['model.unet.attention_implementation'] = None if attention == 'auto' else attention
  if ARGS.dtype:
    settings['model.unet.dtype'] = ARGS.dtype
  if TRAINABLE[mode] is not None:
    settings['trainable'] = TRAINABLE[mode]
  return config_utils.override(config, **settings)


def describe(config) -> tuple[str, str]:
  """(remat policy, attention) as the config sets them."""
  model = config.model
  policy = model.remat_policy if model.remat else 'off'
  return policy, str(model.unet.attention_implementation or 'auto')


def example_batch(config, stage, sharding, abstract: bool) -> dict:
  """The step's batch: cached latents + CLIP contexts, or frames + caption ids."""
  b, f = config.batch_size, config.data.num_frames
  rng = np.random.default_rng(0)
  if ARGS.inputs == 'latents':
    h, w = stage.latent_size()
    shapes = dict(latent_mean=((b, f, h, w, config.model.unet.in_channels), np.float32),
                  latent_logvar=((b, f, h, w, config.model.unet.in_channels), np.float32),
                  text_context=((b, stage.text_length, config.model.unet.cross_attention_dim),
                                np.float32))
  else:
    h, w = config.model.frame_size
    shapes = dict(video=((b, f, h, w, 3), np.float32),
                  caption=((b, stage.text_length), np.int32))
  if abstract:
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}
  host = {}
  for k, (s, d) in shapes.items():
    if d == np.int32:
      host[k] = rng.integers(0, 256, s).astype(d)
    elif k == 'latent_logvar':
      host[k] = np.full(s, -4.0, d)
    else:
      host[k] = rng.uniform(-1, 1, s).astype(d)
  return {k: jax.device_put(v, sharding) for k, v in host.items()}


class Mode:
  """One training mode's state (shared by its rows), labels, optimiser and model FLOPs."""

  def __init__(self, mode: str, params=None):
    self.mode = mode
    config = stage_config(mode, 'config', 'config')
    stage = stages.get_stage(config.stage)(config)
    self.mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self.batch = example_batch(config, stage, self.batch_sharding, ARGS.lower_only)
    self.key = jax.random.key(0)
    start = time.perf_counter()
    if ARGS.lower_only or params is not None:
      self.state, self.state_sharding, self.labels, self.tx = train_step.plan_train_state(
          stage, config, self.mesh, self.batch, self.key)
      if params is not None:  # The previous mode's params: no second init.
        make_state = train_step.make_state_fn(config, self.labels, self.tx)
        self.state = jax.jit(make_state, out_shardings=self.state_sharding,
                             donate_argnums=0)(params)
    else:
      self.state, self.state_sharding, self.labels, self.tx = train_step.create_train_state(
          stage, config, self.mesh, self.batch, self.key)
    if not ARGS.lower_only:
      jax.block_until_ready(self.state)
    self.init_seconds = time.perf_counter() - start
    params = self.state.params
    self.total = train_setup.tree_size(params)
    trained = self.state.ema_params
    self.trainable = train_setup.tree_size(trained) if trained is not None else 0
    self.opt_bytes = train_setup.tree_bytes(self.state.opt_state)
    # Model FLOPs: no remat, XLA attention (cuDNN's fused call hides its matmuls).
    self.model_flops = train_setup.jaxpr_flops(jax.make_jaxpr(self.step(stage_config(
        mode, 'off', 'xla')))(self.state, self.batch))

  def step(self, config):
    stage = stages.get_stage(config.stage)(config)
    return train_step.make_train_step(stage, config, self.labels, self.tx, self.state_sharding,
                                      self.batch_sharding, self.key)


def memory_bytes(compiled) -> float | None:
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # Some backends do not answer.
    return None


def measure(mode: Mode, policy: str, attention: str, matmul) -> dict:
  """Compiles and times one row; the step runs on `mode.state` (donated, then replaced)."""
  config = stage_config(mode.mode, policy, attention)
  row = dict(mode=mode.mode, policy=describe(config)[0], attention=describe(config)[1])
  start = time.perf_counter()
  traced = mode.step(config).trace(mode.state, mode.batch)
  row['executed'] = train_setup.jaxpr_flops(traced.jaxpr)
  lowered = traced.lower()
  if ARGS.lower_only and not ARGS.compile:
    row.update(compile=time.perf_counter() - start, xla=None, memory=None)
    return row
  compiled = lowered.compile()
  row['compile'] = time.perf_counter() - start
  row['xla'] = common.compiled_flops(compiled)
  row['memory'] = memory_bytes(compiled)
  if ARGS.lower_only:
    return row
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  if limit and row['memory'] and row['memory'] > limit:  # Not run: it would not fit.
    row['skipped'] = f'needs {fmt_bytes(row["memory"])} of {fmt_bytes(limit)}'
    return row

  def run():
    mode.state, metrics = compiled(mode.state, mode.batch)
    return metrics['loss']

  times = common.interleaved({'step': run, 'matmul': matmul}, ARGS.repeats, warmup=2)
  row.update(times=times['step'], matmul=times['matmul'], loss=float(run()))
  stats = jax.devices()[0].memory_stats() or {}
  row['device_peak'] = stats.get('peak_bytes_in_use')
  return row


def fmt_flops(x: float | None) -> str:
  return 'n/a' if x is None else f'{x / 1e12:.4g}'


def fmt_bytes(x: float | None) -> str:
  return 'n/a' if x is None else f'{x / GIB:.2f} GiB'


def main():
  modes = ARGS.modes.split(',')
  policies = ARGS.remat_policies.split(',')
  attentions = ARGS.attention.split(',')
  backend = jax.default_backend()
  size = ARGS.matmul_size or (512 if backend == 'cpu' else 8192)
  matmul, matmul_flops = common.matmul_chain('bfloat16', size)
  rows, built, params = [], {}, None
  for mode_name in modes:
    try:
      built[mode_name] = mode = Mode(mode_name, params)
    except Exception as error:  # pylint: disable=broad-except  # E.g. out of memory: go on.
      print(f'{mode_name}: state failed: {str(error).splitlines()[0][:300]}', flush=True)
      continue
    print(f'{mode_name}: {mode.trainable:,} trainable of {mode.total:,} params, optimiser '
          f'state {fmt_bytes(mode.opt_bytes)}, init {mode.init_seconds:.1f} s, model '
          f'{fmt_flops(mode.model_flops)} TFLOP/step', flush=True)
    for attention in attentions:
      for policy in policies:
        try:
          row = measure(mode, policy, attention, matmul)
        except Exception as error:  # pylint: disable=broad-except  # E.g. out of memory.
          print(f'{mode_name} {attention} {policy}: failed: '
                f'{str(error).splitlines()[0][:300]}', flush=True)
          continue
        rows.append(row)
        line = (f'{mode_name} {row["attention"]} {row["policy"]}: compile '
                f'{row["compile"]:.1f} s, executed {fmt_flops(row["executed"])} TFLOP, XLA '
                f'{fmt_flops(row["xla"])} TFLOP, memory {fmt_bytes(row["memory"])}')
        if 'times' in row:
          line += f', step {common.spread(row["times"])}, loss {row["loss"]:.4f}'
        if 'skipped' in row:
          line += f', not run: {row["skipped"]}'
        print(line, flush=True)
    if not ARGS.lower_only:  # The params go on; this mode's optimiser state and EMA go.
      params, mode.state = mode.state.params, None
  report(rows, built, size, matmul_flops)


def report(rows, built, size, matmul_flops):
  config = stage_config(next(iter(built), 'temporal'), 'config', 'config')
  stage = stages.get_stage(config.stage)(config)
  h, w = stage.latent_size()
  notes = [f'{ARGS.size} size: U-Net {tuple(config.model.unet.block_out_channels)}, batch '
           f'{config.batch_size} x {config.data.num_frames} frames of {h}x{w} latents '
           f'({ARGS.inputs}), compute {config.model.unet.dtype}, one device']
  peak = None
  samples = [t for row in rows for t in row.get('matmul', ())]
  if samples:
    peak = matmul_flops / common.median(samples)
    notes.append(f'bf16 matmul peak {peak / 1e12:.3g} TFLOP/s ({size}^3 chain, '
                 f'{common.spread(samples)} over all rows); median (min-max) of '
                 f'{ARGS.repeats} steps after 2 warm-up steps')
  table = []
  for row in rows:
    model = built[row['mode']].model_flops
    cells = [row['mode'], row['attention'], row['policy'], f'{row["compile"]:.0f} s']
    if 'times' in row:
      step = common.median(row['times'])
      cells += [common.spread(row['times']), fmt_flops(model), fmt_flops(row['executed']),
                fmt_flops(row['xla']), f'{model / step / 1e12:.4g}',
                f'{100 * model / step / peak:.1f}%', f'{100 * row["executed"] / step / peak:.1f}%']
    else:
      cells += [row.get('skipped', '-'), fmt_flops(model), fmt_flops(row['executed']),
                fmt_flops(row['xla']), '-', '-', '-']
    cells.append(fmt_bytes(row['memory']))
    table.append(cells)
  by_key = {(r['mode'], r['attention'], r['policy']): r for r in rows}
  for (mode, attention, policy), row in by_key.items():
    full = by_key.get(('full', attention, policy))
    if mode == 'temporal' and full is not None:
      ratio = (f'temporal / full ({attention}, {policy}): model FLOPs '
               f'{built["temporal"].model_flops / built["full"].model_flops:.3f}x')
      if 'times' in row and 'times' in full:
        ratio += (f', step time '
                  f'{common.median(row["times"]) / common.median(full["times"]):.3f}x')
      ratio += (f', optimiser state '
                f'{built["temporal"].opt_bytes / built["full"].opt_bytes:.3f}x')
      notes.append(ratio)
  common.report('SD-scale text_video train step', [
      'mode', 'attention', 'remat', 'compile', 'step time', 'TFLOP model', 'TFLOP executed',
      'TFLOP XLA', 'TFLOP/s', 'MFU', 'HFU', 'memory (XLA)'], table, notes)
  peaks = [r.get('device_peak') for r in rows if r.get('device_peak')]
  if peaks:
    print(f'\ndevice allocator peak over the run: {fmt_bytes(max(peaks))}')
  sys.stdout.flush()


if __name__ == '__main__':
  main()
