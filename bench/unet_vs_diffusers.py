"""Figure 1: U-Net forward and autoencoder decode, ours (jit) vs diffusers (PyTorch).

The same SD-architecture U-Net (mid-size: channels 64/128/256/256, two
ResBlocks per level, cross-attention to 77 x 256 tokens), the same random
weights converted with `unet_from_diffusers`, batch 8 of 32x32x4 latents,
float32, both pinned to the same CPU cores. Likewise the KL autoencoder
decode (SD VAE layout at half width) of 8 latents 32x32x4 -> 256x256x3.

  python bench/unet_vs_diffusers.py [--threads=2] [--repeats=7] [--batch=8]
  python bench/unet_vs_diffusers.py --size=sd15 --batch=2   # SD 1.5 U-Net and VAE
  python bench/unet_vs_diffusers.py --devices=processes      # ours: one process per core

`--devices=processes` runs ours as one single-device JAX process per core, each
on its rows of the batch (bench/core_processes.py), as `launch/multiprocess_cpu.sh
--devices_per_process=1` trains; the default is one XLA device per core in one
process, as training and sampling run by default.

`--size`: the model widths, in bench/diffusers_configs.py.

'U-Net sampling step' times the U-Net as a sampler runs it: `--sampling_steps`
denoising steps `x <- x - 0.01 eps(x)` in one `lax.scan` (ours, as
`diffusion.ddim` runs) and in a Python loop (diffusers), reported per step.
XLA computes what does not change between steps once, before the loop (on a
CPU, the Winograd convolutions' transformed kernels); a single forward cannot.
"""

import argparse
import functools
import gc
import os
import sys

import common
import core_processes
import diffusers_configs

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--threads', type=int, default=2)
PARSER.add_argument('--repeats', type=int, default=7)
PARSER.add_argument('--batch', type=int, default=8)
PARSER.add_argument('--skip_vae', action='store_true')
PARSER.add_argument('--sampling_steps', type=int, default=8,
                    help="steps of the 'U-Net sampling step' row (0: no such row)")
PARSER.add_argument('--size', choices=diffusers_configs.SIZES, default='mid')
PARSER.add_argument('--devices', choices=('per_core', 'one', 'processes'), default='per_core',
                    help="ours on one XLA CPU device per core (the batch split across them, "
                         "as training and sampling run), on one device, or as one "
                         "single-device process per core (bench/core_processes.py)")
PARSER.add_argument('--allocator', choices=('kept', 'glibc'), default='kept',
                    help="'kept': freed memory kept for reuse in every process "
                         "(`host_devices.keep_freed_memory`, as videoldm's entry points run); "
                         "'glibc': glibc's defaults")
PARSER.add_argument(core_processes.CORE_FLAG, type=int, help=argparse.SUPPRESS)
ARGS = PARSER.parse_args()
from videoldm import host_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
if ARGS.allocator == 'kept':  # Both sides, before either starts a thread.
  host_devices.keep_freed_memory()
if ARGS.core is not None:  # A worker of --devices=processes: its core, one XLA device.
  core_processes.pin_to_core(ARGS.core)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  CORES = 1
else:
  CORES = common.configure_cpu_threads(ARGS.threads) if ARGS.threads else None
if ARGS.devices == 'per_core' and ARGS.core is None:
  host_devices.use_one_device_per_core()

import diffusers  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, common.TESTS)
import diffusers_reference as ref  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.convert import diffusers as convert_unet  # pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.convert import diffusers_vae as convert_vae  # pylint: disable=g-import-not-at-top,wrong-import-position

UNET = diffusers_configs.unet_config(ARGS.size)
VAE = diffusers_configs.vae_config(ARGS.size)
CONTEXT_DIM = UNET['cross_attention_dim']


DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def put(params, *batched):
  """Params replicated, this process's rows of the batched arrays split over its devices."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rows = slice(None)
  if ARGS.core is not None:  # One of ARGS.threads core processes: its share of the batch.
    share = batched[0].shape[0] // ARGS.threads
    rows = slice(ARGS.core * share, (ARGS.core + 1) * share)
  return [jax.device_put(params, replicated)] + [jax.device_put(a[rows], split) for a in batched]


def synchronized(out: torch.Tensor) -> torch.Tensor:
  """Waits for the GPU (if any)."""
  if DEVICE == 'cuda':
    torch.cuda.synchronize()
  return out


def unet_models(batch: int, sides: tuple[str, ...]):
  """Ours `(model, args)` and diffusers' `(model, args)`, each None unless in `sides`."""
  torch_model = ref.randomize_(diffusers.UNet2DConditionModel(**UNET), seed=0)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, 32, 32, 4)).astype(np.float32)
  t = np.full((batch,), 500.0, np.float32)
  context = rng.standard_normal((batch, 77, CONTEXT_DIM)).astype(np.float32)
  ours = theirs = None
  if 'ours' in sides:
    state, config = ref.state_dict_numpy(torch_model), torch_model.config
    if 'theirs' not in sides:
      del torch_model  # At SD 1.5 size each copy of the weights is 3.4 GB.
    model, params = convert_unet.unet_from_diffusers(state, config)
    del state
    ours = model, put(params, x, t, context)
  if 'theirs' in sides:
    torch_model.to(DEVICE)
    theirs = torch_model, [a.to(DEVICE) for a in (ref.nchw(x), torch.from_numpy(t),
                                                  torch.from_numpy(context))]
  return ours, theirs


def unet_case(batch: int, sides: tuple[str, ...], steps: int = 0):
  """`(ours, theirs)`: one U-Net forward each, or `steps` denoising steps in a row.

  Steps run in one `lax.scan` (ours, as the samplers run) and in a Python loop
  (diffusers); a side not in `sides` is None.
  """
  ours, theirs = unet_models(batch, sides)
  ours_fn = theirs_fn = None
  if ours:
    model, args = ours

    def sample(p, x, t, c):
      if not steps:
        return model.apply({'params': p}, x, t, c)
      def step(x, _):
        return x - 0.01 * model.apply({'params': p}, x, t, c), None
      return jax.lax.scan(step, x, None, length=steps)[0]

    sampler = jax.jit(sample)
    ours_fn = lambda: sampler(*args)
  if theirs:
    torch_model, (tx, tt, tc) = theirs

    def theirs_fn():
      with torch.inference_mode():
        if not steps:
          return synchronized(torch_model(tx, tt, tc).sample)
        x = tx
        for _ in range(steps):
          x = x - 0.01 * torch_model(x, tt, tc).sample
        return synchronized(x)
  return ours_fn, theirs_fn


def vae_case(batch: int, sides: tuple[str, ...]):
  """`(ours, theirs)`: one autoencoder decode each (None for a side not in `sides`)."""
  torch_model = ref.randomize_(diffusers.AutoencoderKL(**VAE), seed=0)
  z = np.random.default_rng(0).standard_normal((batch, 32, 32, 4)).astype(np.float32)
  ours_fn = theirs_fn = None
  if 'ours' in sides:
    module, params = convert_vae.autoencoder_from_diffusers(ref.state_dict_numpy(torch_model),
                                                            dict(torch_model.config))
    decode = jax.jit(lambda p, z: module.apply({'params': p}, z, method='decode'))
    args = put(params, z)
    ours_fn = lambda: decode(*args)
  if 'theirs' in sides:
    torch_model.to(DEVICE)
    tz = ref.nchw(z).to(DEVICE)

    def theirs_fn():
      with torch.inference_mode():
        return synchronized(torch_model.decode(tz).sample)
  return ours_fn, theirs_fn


def faults_per_call(fn, calls: int) -> str:
  """'faults (system ms)' per model call during one timed call of `fn`; '-' for None."""
  if fn is None:  # Ours in worker processes: their faults are not this process's.
    return '-'
  faults, system = common.page_faults(fn)
  return f'{faults / calls:,.0f} ({1e3 * system / calls:.0f})'


CASES = {'U-Net forward': (unet_case, 1),  # name: (make, calls per timed call)
         'U-Net sampling step': (functools.partial(unet_case, steps=ARGS.sampling_steps),
                                 ARGS.sampling_steps),
         'VAE decode': (vae_case, 1)}


def main():
  if CORES:
    torch.set_num_threads(CORES)
  if DEVICE == 'cuda':  # XLA's default f32 matmul precision on GPU allows TF32; match it.
    torch.set_float32_matmul_precision('high')
  names = ['U-Net forward'] + ['U-Net sampling step'] * bool(ARGS.sampling_steps)
  names += ['VAE decode'] * (not ARGS.skip_vae)
  workers = None
  if ARGS.devices == 'processes':
    if ARGS.batch % CORES:
      raise ValueError(f'--batch={ARGS.batch} must be a multiple of the {CORES} cores for '
                       '--devices=processes.')
    workers = core_processes.CoreProcesses(__file__, sys.argv[1:] + [f'--threads={CORES}'],
                                           CORES)
  rows = []
  for name in names:
    make, calls = CASES[name]
    if workers:
      _, theirs = make(ARGS.batch, ('theirs',))
      workers.build(name)
      ours, ours_output = workers.run, workers.output
    else:
      ours, theirs = make(ARGS.batch, ('ours', 'theirs'))
      ours_output = lambda: np.asarray(ours())  # pylint: disable=cell-var-from-loop
    error = ref.relative_error(ours_output(), ref.nhwc(theirs().cpu()))
    times = common.interleaved({'ours': ours, 'diffusers': theirs}, ARGS.repeats, warmup=2)
    times = {side: [time / calls for time in values] for side, values in times.items()}
    ratio = common.median(times['diffusers']) / common.median(times['ours'])
    faults = [faults_per_call(fn, calls) for fn in ((None if workers else ours), theirs)]
    rows.append([name, common.spread(times['ours']), common.spread(times['diffusers']),
                 f'{ratio:.2f}x', f'{error:.1e}', ' \\| '.join(faults)])
    del ours, theirs  # Both models' weights go before the next case builds its own.
    gc.collect()
  if workers:
    workers.close()
  placement = (f'{CORES} single-device processes, one per core' if workers else
               f'{jax.device_count()} XLA device(s)')
  common.report(
      f'Figure 1: forward vs diffusers (same weights, float32, {ARGS.size} size)',
      ['model', 'ours (jit)', 'diffusers (torch)', 'our throughput / theirs', 'rel. error',
       'page faults, sys ms / call: ours \\| theirs'],
      rows, [f'torch on {DEVICE}{" (TF32 allowed in both)" if DEVICE == "cuda" else ""}; '
             f'threads: {CORES} for both (torch.set_num_threads, XLA pinned to {CORES} cores, '
             f'{placement}); allocator: {ARGS.allocator}; batch {ARGS.batch}, latents 32x32x4; '
             f'median (min-max) of {ARGS.repeats} interleaved calls; page faults and system '
             'time of one more call each (not in worker processes)'])


def serve_core() -> None:
  """A `--core=i` worker: builds and runs the parent's cases on its rows of the batch."""
  core_processes.serve(lambda name: CASES[name][0](ARGS.batch, ('ours',))[0])


if __name__ == '__main__':
  if ARGS.core is None:
    main()
  else:
    serve_core()
