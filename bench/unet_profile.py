"""Where ours spends a U-Net call on a CPU: one `jax.profiler` trace, summed by HLO op.

Builds figure 1's U-Net (bench/diffusers_configs.py; random weights), placed as
training and sampling run it (one XLA device per core, the batch split across
them), traces one call, and prints per call and device: the time by kind of op,
then the matmuls grouped by shape with their GFLOP/s beside this machine's
single-core rate on a square matmul (`bench/common.matmul_chain`).

  python bench/unet_profile.py --size=sd15 --batch=2 [--sampling_steps=4] [--top=20]

`--sampling_steps=N` traces N denoising steps in one `lax.scan` (as
`bench/unet_vs_diffusers.py` times them) and divides by N; 0 traces one forward.
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile

import common
import diffusers_configs

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--size', choices=diffusers_configs.SIZES, default='sd15')
PARSER.add_argument('--batch', type=int, default=2)
PARSER.add_argument('--threads', type=int, default=2)
PARSER.add_argument('--sampling_steps', type=int, default=4)
PARSER.add_argument('--top', type=int, default=20, help='matmul shapes listed')
ARGS = PARSER.parse_args()
CORES = common.configure_cpu_threads(ARGS.threads)
from videoldm import host_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
host_devices.keep_freed_memory()
DEVICES = host_devices.use_one_device_per_core()

import diffusers  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from videoldm.convert import diffusers as convert_unet  # pylint: disable=g-import-not-at-top

# `%name = f32[64,1280]{1,0} fusion(...)`: an HLO instruction, its result and opcode.
INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(')
DOT = re.compile(r'%?([\w.\-]+) = (\S+) dot\(%?([\w.\-]+), %?([\w.\-]+)\)'
                 r'.*lhs_contracting_dims=\{([\d,]*)\}')


def dims(shape: str) -> list[int]:
  """`f32[64,1280]{1,0}` -> [64, 1280]."""
  inside = shape.split('{')[0].partition('[')[2].rstrip(']')
  return [int(d) for d in inside.split(',') if d]


def computations(hlo: str) -> dict[str, list[str]]:
  """Each HLO computation's name and its instruction lines."""
  bodies, current = {}, None
  for line in hlo.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      current = line.split()[1 if line.startswith('ENTRY') else 0].lstrip('%')
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  return bodies


def classify(hlo: str) -> dict[str, tuple[str, float]]:
  """Instruction name -> (group, FLOPs): matmuls grouped by `rows x contraction -> columns`."""
  bodies = computations(hlo)
  shapes = {m.group(1): dims(m.group(2)) for m in map(INSTRUCTION.match, hlo.splitlines()) if m}
  groups = {}
  for body in bodies.values():
    for line in body:
      match = INSTRUCTION.match(line)
      if not match:
        continue
      name, _, opcode = match.groups()
      called = re.search(r'calls=%?([\w.\-]+)', line)
      inner = bodies.get(called.group(1), []) if called else [line]
      flops, keys = 0.0, []
      for dot in filter(None, map(DOT.search, inner)):
        out, lhs = dims(dot.group(2)), shapes[dot.group(3)]
        contraction = math.prod(lhs[int(d)] for d in dot.group(5).split(',') if d)
        flops += 2 * math.prod(out) * contraction
        keys.append(f'{math.prod(out[:-1])} x {contraction} -> {out[-1]}')
      ops = set(re.findall(r' = \S+ ([\w\-]+)\(', '\n'.join(inner)))
      if keys:
        group = 'matmul ' + ' + '.join(keys)
      elif 'convolution' in ops:
        group = 'convolution (XLA)'
      elif opcode in ('while', 'call', 'conditional'):
        continue  # Their bodies' instructions are traced themselves.
      else:
        group = 'reduction' if 'reduce' in ops else 'elementwise, copies'
      groups[name] = (group, flops)
  return groups


def traced(call) -> tuple[collections.Counter, collections.Counter]:
  """Microseconds and events per traced event name over one call of `call` (all threads)."""
  with tempfile.TemporaryDirectory() as root:
    jax.profiler.start_trace(root, create_perfetto_trace=True)
    jax.block_until_ready(call())
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(root, 'plugins', 'profile', '*', 'perfetto_trace.json.gz'))
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  totals, counts = collections.Counter(), collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      totals[event['name']] += event['dur']
      counts[event['name']] += 1
  return totals, counts


def unet_call():
  """`(call, jitted, args)`: ours at `--size` on random weights, placed one device per core."""
  config = diffusers_configs.unet_config(ARGS.size)
  with torch.device('meta'):
    layout = diffusers.UNet2DConditionModel(**config)
  rng = np.random.default_rng(0)
  state = {k: (0.02 * rng.standard_normal(v.shape)).astype(np.float32)
           for k, v in layout.state_dict().items()}
  model, params = convert_unet.unet_from_diffusers(state, layout.config)
  del state
  x = rng.standard_normal((ARGS.batch, 32, 32, 4)).astype(np.float32)
  t = np.full((ARGS.batch,), 500.0, np.float32)
  context = rng.standard_normal((ARGS.batch, 77, config['cross_attention_dim']))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  sharding = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  params = jax.device_put(params, sharding())
  args = [params] + [jax.device_put(a, sharding('data'))
                     for a in (x, t, context.astype(np.float32))]

  def sample(p, x, t, c):
    if not ARGS.sampling_steps:
      return model.apply({'params': p}, x, t, c)
    step = lambda x, _: (x - 0.01 * model.apply({'params': p}, x, t, c), None)
    return jax.lax.scan(step, x, None, length=ARGS.sampling_steps)[0]

  jitted = jax.jit(sample)
  return (lambda: jitted(*args)), jitted, args


def square_matmul_rate(size: int = 1024) -> float:
  """GFLOP/s per device of a chain of 4 square matmuls run on every device at once."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  a = jax.device_put(np.random.default_rng(1).standard_normal((DEVICES, size, size),
                                                               np.float32), split)

  @jax.jit
  def chain(a):
    b = a
    for _ in range(4):
      b = jnp.einsum('dij,djk->dik', b, a) * 0.01
    return b

  jax.block_until_ready(chain(a))
  seconds = common.median([common.time_call(lambda: chain(a)) for _ in range(5)])
  return 4 * 2 * size**3 / seconds / 1e9


def main():
  call, jitted, args = unet_call()
  hlo = jitted.lower(*args).compile().as_text()
  groups = classify(hlo)
  for _ in range(2):
    jax.block_until_ready(call())
  wall = common.median([common.time_call(call) for _ in range(3)])
  durations, counts = traced(call)
  core_rate = square_matmul_rate()
  steps = max(ARGS.sampling_steps, 1)
  per_call = steps * DEVICES  # Summed traced time -> per call and device.
  kinds, matmuls = collections.Counter(), collections.defaultdict(lambda: [0.0, 0.0, 0])
  for name, microseconds in durations.items():
    if name not in groups:
      continue
    group, flops = groups[name]
    kinds[group.split(' ')[0] if group.startswith('matmul') else group] += microseconds
    if group.startswith('matmul'):
      entry = matmuls[group[len('matmul '):]]
      entry[0] += microseconds
      entry[1] += flops * counts[name]  # Every device, every step.
      entry[2] += 1
  total = sum(kinds.values())
  rows = [[kind, f'{t / 1e3 / per_call:.1f}', f'{100 * t / total:.0f}%'] for kind, t in
          kinds.most_common()]
  what = f'{ARGS.sampling_steps}-step scan, per step' if ARGS.sampling_steps else 'one forward'
  common.report(
      f'Where ours spends a U-Net call ({ARGS.size} size, batch {ARGS.batch}, {what})',
      ['kind of op', 'ms per call and device', 'share'], rows,
      [f'{DEVICES} XLA devices on {CORES} cores; untraced wall time {1e3 * wall / steps:.0f} ms '
       f'per call; traced ops sum to {total / 1e3 / per_call:.0f} ms per call and device; '
       f'square matmul (1024^3, every device at once): {core_rate:.0f} GFLOP/s per device'])
  rows = []
  for shape, (microseconds, flops, count) in sorted(matmuls.items(), key=lambda kv: -kv[1][0]):
    rate = flops / microseconds / 1e3  # Per device: its FLOPs over its time.
    rows.append([shape, count, f'{microseconds / 1e3 / per_call:.1f}',
                 f'{100 * microseconds / total:.1f}%', f'{rate:.0f}', f'{rate / core_rate:.2f}'])
  common.report('Matmuls by shape (rows x contraction -> columns, per device)',
                ['shape', 'instructions', 'ms per call and device', 'share', 'GFLOP/s',
                 'of square rate'], rows[:ARGS.top])


if __name__ == '__main__':
  main()
