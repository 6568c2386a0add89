"""The Stage interface: what one training stage gives the generic trainer.

A stage builds its models, says how to initialise the whole param tree (frozen
and trainable parts; which are trainable comes from `config.trainable`),
computes a scalar loss, and renders samples for logging. GAN-style stages fold
generator and discriminator losses into one scalar with `stop_gradient`, so
one optimiser over one param tree suffices.
"""

from typing import Any

import jax
import ml_collections

Batch = dict[str, Any]


class Stage:
  """Base class; subclasses override `init_params`, `loss_fn` and `sample`.

  `preprocess`, `init_params`, `calibrate`, `loss_fn` and `sample` run inside
  `jax.jit` on the sharded global batch, so they must be pure and jittable.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def init_params(self, rng: jax.Array, batch: Batch) -> Any:
    """The whole float32 param tree; may load pretrained parts named by the config."""
    raise TypeError(f'{type(self).__name__} must override Stage.init_params.')

  def loss_fn(self, params: Any, batch: Batch, rng: jax.Array,
              step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, dict of scalar metrics); pure and jittable."""
    raise TypeError(f'{type(self).__name__} must override Stage.loss_fn.')

  def sample(self, params: Any, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Videos to log, each `(b, f, h, w, 3)` in [-1, 1]; jittable."""
    raise TypeError(f'{type(self).__name__} must override Stage.sample.')

  def calibrate(self, params: Any, batch: Batch) -> Any:
    """Optional data-dependent fix-up of fresh params (e.g. a latent scale), run once.

    Called on a fresh start after `init_from` has loaded params (never on resume);
    jittable. The default returns `params` unchanged.
    """
    del batch
    return params

  def preprocess(self, batch: Batch) -> Batch:
    """Optional jittable batch transform applied before `init_params`/`loss_fn`/`sample`."""
    return batch
