"""The `video` stage train step as the trainer builds it, for figures 2 and 3.

Also a jaxpr FLOP counter: 2 * MACs of every `dot_general` and
`conv_general_dilated` in the traced step (matmuls, convolutions and the
attention einsums), following nested jaxprs (pjit, scan, remat, custom_vjp).
"""

import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from videoldm import config_utils
from videoldm import stages
from videoldm.models import params as params_lib
from videoldm.models import video_unet
from videoldm.train import sharding as sharding_lib
from videoldm.train import train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'moving_digits.py')


def video_config(batch_size: int, channels=(64, 128), trainable: str | None = None,
                 dtype: str = 'float32', frames: int = 8, image_size: int = 32, **overrides):
  """The `video` stage config (runlocal data) with a U-Net of `channels` and `batch_size`."""
  config = config_utils.load_config(f'{CONFIG}:stage=video,runlocal')
  settings = {'batch_size': batch_size, 'model.unet.block_out_channels': tuple(channels),
              'model.unet.dtype': dtype, 'data.num_frames': frames,
              'data.image_size': image_size, **overrides}
  if trainable is not None:
    settings['trainable'] = trainable
  return config_utils.override(config, **settings)


def build_step(config, seed: int = 0):
  """`(state, step_fn, batch)`: the trainer's jitted, donated step on the default devices."""
  stage = stages.get_stage(config.stage)(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  rng = np.random.default_rng(seed)
  size, frames = config.data.image_size, config.data.num_frames
  host = dict(video=rng.uniform(-1, 1, (config.batch_size, frames, size, size, 3)).astype(
      np.float32), labels=rng.integers(0, 10, (config.batch_size, 2)).astype(np.int32))
  batch = {k: jax.device_put(v, batch_sharding) for k, v in host.items()}
  key = jax.random.key(seed)
  state, state_sharding, labels, tx = train_step.create_train_state(stage, config, mesh, batch, key)
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding, batch_sharding, key)
  return state, step, batch


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lhs_contract, _), (lhs_batch, _) = eqn.params['dimension_numbers']
  out = math.prod(eqn.outvars[0].aval.shape)
  contracted = math.prod(lhs[d] for d in lhs_contract)
  del rhs, lhs_batch
  return 2.0 * out * contracted


def _conv_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  dims = eqn.params['dimension_numbers']
  out = math.prod(eqn.outvars[0].aval.shape)
  kernel_in = rhs[dims.rhs_spec[1]]
  window = math.prod(rhs[d] for d in dims.rhs_spec[2:])
  del lhs
  return 2.0 * out * kernel_in * window


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of convs and dot_generals in a (closed) jaxpr, nested jaxprs included."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    repeat = eqn.params.get('length', 1) if name == 'scan' else 1
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          total += repeat * jaxpr_flops(sub)
  return total


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, 'shape'))


def tree_size(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if hasattr(x, 'shape'))


def unet_gradient_flops(variant: str, frames: int, height: int, width: int,
                        temporal_only: bool) -> float:
  """Jaxpr FLOPs of one forward + backward of `VideoUNet(video_unet_config(variant))`.

  Abstract (no arrays, no compile): batch 1 of `frames` latents `height x width`;
  gradients of the temporal params only, or of all params.
  """
  config = video_unet.video_unet_config(variant)
  model = video_unet.VideoUNet(config)
  inputs = video_unet.example_inputs(config, 1, frames)
  shapes = {'x': (1, frames, height, width, config.in_channels),
            'context_latents': (1, frames, height, width, config.out_channels)}
  if 'context' in inputs:
    shapes['context'] = (1, 77, config.cross_attention_dim)
  inputs = {k: jax.ShapeDtypeStruct(shapes.get(k, v.shape), v.dtype) for k, v in inputs.items()}
  flat = flax.traverse_util.flatten_dict(params_lib.param_shapes(config), sep='/')
  trained = {k: v for k, v in flat.items() if params_lib.is_temporal(k) or not temporal_only}
  frozen = {k: v for k, v in flat.items() if k not in trained}

  def loss(trained, frozen, inputs):
    params = flax.traverse_util.unflatten_dict({**trained, **frozen}, sep='/')
    return jnp.mean(jnp.square(model.apply({'params': params}, **inputs)))

  return jaxpr_flops(jax.make_jaxpr(jax.grad(loss))(trained, frozen, inputs))
