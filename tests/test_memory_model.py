"""The analytic memory model (videoldm/train/memory_model.py) against XLA's compiled memory.

Each case compiles the real `text_video` train step (tiny U-Net, cached latents,
abstract state) and compares the model's `total` with XLA's peak: arguments +
outputs + temporaries - aliased outputs (the donated state). The cases are
chosen so that leaving out a term would miss: activations dominate the first,
the optimiser state is over 10% of the second. Remat policies are checked for
their ordering only: XLA's CPU scheduler recomputes remat'd blocks early, so on
CPU their peak equals the no-remat one (bench/RESULTS.md, "Memory model").
"""

import jax
import memory_model_helpers
import pytest

from videoldm import stages
from videoldm.models import params as params_lib
from videoldm.train import memory_model
from videoldm.train import sharding as sharding_lib
from videoldm.train import train_step

TOLERANCE = 0.10


def test_temporal_only_without_remat_within_ten_percent():
  config = memory_model_helpers.tiny_text_config(batch=2, frames=4, latent=(16, 16))
  ratio, estimate, xla = memory_model_helpers.compare(config)
  assert abs(ratio - 1) <= TOLERANCE, (ratio, estimate.rows(), xla)
  # Without the activations the model would be far off.
  assert estimate.activations > 2 * TOLERANCE * xla['peak']
  assert (estimate.total - estimate.activations) / xla['peak'] < 1 - TOLERANCE


def test_full_training_within_ten_percent():
  config = memory_model_helpers.tiny_text_config(batch=1, frames=2, latent=(8, 8),
                                                 trainable=r'^unet/')
  ratio, estimate, xla = memory_model_helpers.compare(config)
  assert abs(ratio - 1) <= TOLERANCE, (ratio, estimate.rows(), xla)
  # Full training: the whole U-Net's Adam moments, which the model must count.
  assert (estimate.total - estimate.optimizer) / xla['peak'] < 1 - TOLERANCE


def test_policies_and_errors():
  config = memory_model_helpers.tiny_text_config()
  shape = dict(batch_size=2, frames=4, height=16, width=16, text_length=12,
               spatial_trainable=False)
  saved = {policy: memory_model.activation_bytes(config.model.unet, policy=policy, **shape)[0]
           for policy in memory_model.POLICIES}
  assert saved['nothing_saveable'] < saved['dots_saveable'] < saved['none']
  trainable = memory_model.activation_bytes(config.model.unet, **{
      **shape, 'spatial_trainable': True})[0]
  assert trainable > saved['none']
  with pytest.raises(ValueError, match="model.remat_policy='everything_saveable'"):
    memory_model.policy_of(memory_model_helpers.tiny_text_config(
        remat='blocks', policy='everything_saveable').model)


def test_a_bf16_unet_and_its_clip_hold_frozen_params_in_two_bytes_in_state_and_model():
  held_bytes, frozen_bytes, frozen_unet, clip = {}, {}, 0, 0
  for dtype in ('float32', 'bfloat16'):
    config = memory_model_helpers.tiny_text_config(dtype=dtype)
    stage = stages.get_stage(config.stage)(config)
    mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
    abstract, _, _, _ = train_step.plan_train_state(stage, config, mesh, {}, jax.random.key(0))
    held_bytes[dtype] = sum(leaf.size * leaf.dtype.itemsize
                            for leaf in jax.tree.leaves(abstract.params))
    frozen_bytes[dtype] = memory_model.estimate_from_config(config, stage).params_frozen
    frozen_unet = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(
        abstract.params) if sharding_lib.path_names(path)[0] == 'unet'
                      and not params_lib.is_temporal('/'.join(sharding_lib.path_names(path))))
    clip = sum(leaf.size for leaf in jax.tree.leaves(abstract.params['text_encoder']))
  assert frozen_unet > 0 and clip > 0
  assert held_bytes['float32'] - held_bytes['bfloat16'] == 2 * (frozen_unet + clip)
  assert frozen_bytes['float32'] - frozen_bytes['bfloat16'] == 2 * (frozen_unet + clip)
