"""Shared test helpers: stages from the runlocal configs with random params."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from videoldm import config_utils
from videoldm import stages
from videoldm.pipelines import video_ldm

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                      'moving_digits.py')


def random_params(stage, batch, seed=0):
  """Random params shaped like `stage.init_params` without compiling the init."""
  shapes = jax.eval_shape(stage.init_params, jax.random.key(0), batch)
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  values = [jnp.asarray(rng.normal(0, 0.05, leaf.shape), leaf.dtype) for leaf in leaves]
  params = jax.tree.unflatten(treedef, values)
  if 'latent_scale' in params:
    params['latent_scale'] = jnp.ones(())
  return params


def load_stage(name, **overrides):
  """A `Model` of stage `name` (runlocal config, 2 sampling steps) with random params."""
  config = config_utils.load_config(f'{CONFIG}:stage={name},runlocal')
  config = config_utils.override(config, **{'sampling.num_steps': 2, **overrides})
  stage = stages.get_stage(name)(config)
  frames, size = config.data.num_frames, config.data.image_size
  batch = dict(video=jnp.zeros((1, frames, size, size, 3)),
               labels=jnp.zeros((1, 2), jnp.int32))
  return video_ldm.Model(stage, random_params(stage, batch, seed=len(name)))
