"""Adversarial autoencoder losses shared by the `autoencoder` and `decoder` stages.

As taming's `LPIPSWithDiscriminator` (LDM paper Sec. 2 / Video LDM Sec. 3.1.1),
folded into ONE scalar for one optimiser over one param tree:

  generator     = nll + disc_factor * d_weight * (-mean D_sg(phi)(x_rec))
  discriminator = disc_factor * hinge(D_phi(sg(x)), D_phi(sg(x_rec)))
  loss          = generator + discriminator (+ the stage's KL term)

`sg` is `jax.lax.stop_gradient`, so the autoencoder gets exactly the
generator's gradient and the discriminator exactly the hinge loss's.
`d_weight = disc_weight * ||dnll/dW|| / (||dg/dW|| + 1e-4)` with W the
decoder's last layer kernel (stop-gradient'd); `disc_factor` is 0 before
`disc_start` (`adopt_weight`); before then an accelerator does not run the
discriminator at all (`lax.cond`; its metrics log as 0), while a CPU runs it
and weights it by 0; a run that ends before `disc_start` never builds it
(`discriminator_schedule`). `nll` is the mean absolute error per pixel.

Config fields (`config.model.loss`, see `default_loss_config`): `kl_weight`,
`disc_weight`, `disc_start`, `disc_loss` ('hinge' or 'vanilla'),
`perceptual_weight` (must be 0.0: no LPIPS weights are available offline, so
the perceptual term is not part of this codebase). `config.model.discriminator`
(`default_discriminator_config`): `base_channels`, `num_layers`, `norm`,
`time_kernel` (3D only).
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import discriminator as discriminator_lib

D_LOSSES = {'hinge': discriminator_lib.hinge_d_loss,
            'vanilla': discriminator_lib.vanilla_d_loss}


def default_loss_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """`config.model.loss` with the defaults of the moving_digits stages."""
  return ml_collections.ConfigDict(dict(
      kl_weight=1e-6, disc_weight=0.5, disc_start=10 if runlocal else 1000,
      disc_loss='hinge', perceptual_weight=0.0))


def default_discriminator_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """`config.model.discriminator`: 2 stride-2 layers suit 16x16 to 64x64 frames."""
  return ml_collections.ConfigDict(dict(
      base_channels=16 if runlocal else 64, num_layers=2, norm='group', time_kernel=3))


def check_loss_config(loss_config: ml_collections.ConfigDict) -> None:
  """ValueError for settings this codebase cannot run."""
  if loss_config.perceptual_weight:
    raise ValueError(f'config.model.loss.perceptual_weight={loss_config.perceptual_weight} is '
                     'not supported: no LPIPS weights are available offline; expected 0.0.')
  if loss_config.disc_loss not in D_LOSSES:
    raise ValueError(f'config.model.loss.disc_loss={loss_config.disc_loss!r} is not one of '
                     f'{sorted(D_LOSSES)}.')


def discriminator_2d(config: ml_collections.ConfigDict) -> discriminator_lib.PatchDiscriminator2D:
  d = config.model.discriminator
  return discriminator_lib.PatchDiscriminator2D(d.base_channels, d.num_layers, d.norm)


def discriminator_3d(config: ml_collections.ConfigDict) -> discriminator_lib.PatchDiscriminator3D:
  d = config.model.discriminator
  return discriminator_lib.PatchDiscriminator3D(d.base_channels, d.num_layers, d.norm,
                                                d.time_kernel)


def get_leaf(tree: Any, path: Sequence[str]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def replace_leaf(tree: Any, path: Sequence[str], value: Any) -> Any:
  """A copy of the nested dict `tree` with the leaf at `path` replaced (no mutation)."""
  if not path:
    return value
  head, *rest = path
  return {**tree, head: replace_leaf(tree[head], rest, value)}


def output_with_last_layer_vjp(apply_fn: Callable[[Any], jax.Array], params: Any,
                               path: Sequence[str]):
  """`(apply_fn(params), vjp)`: `vjp(cotangent)` is the gradient w.r.t. the leaf at `path`.

  One forward pass; the output stays differentiable w.r.t. all of `params`.
  """
  output, vjp = jax.vjp(lambda leaf: apply_fn(replace_leaf(params, path, leaf)),
                        get_leaf(params, path))
  return output, lambda cotangent: vjp(cotangent)[0]


DISC_SCHEDULES = ('off', 'every_step', 'cond')


def discriminator_schedule(loss_config: ml_collections.ConfigDict, total_steps: int) -> str:
  """How a run computes the adversarial terms, one of `DISC_SCHEDULES`.

  'off': `disc_start >= total_steps`, the run never reaches it, nothing is built.
  'every_step': computed at every step and weighted by `disc_factor`: when the
  discriminator is on from step 0, and on CPU, where XLA runs the gradient
  convolutions inside a `lax.cond` branch several times slower than the same
  ops outside one (quickstart autoencoder step 2690 vs 386 ms, temporal decoder
  3735 vs 851 ms), far more than the discriminator costs before `disc_start`
  (336 vs 386 ms). 'cond' (accelerators): `lax.cond` skips it until `disc_start`.
  """
  if loss_config.disc_start >= total_steps:
    return 'off'
  if loss_config.disc_start <= 0 or jax.default_backend() == 'cpu':
    return 'every_step'
  return 'cond'


def gan_losses(real: jax.Array, fake: jax.Array, last_layer_vjp: Callable[[jax.Array], Any],
               discriminate: Callable[[Any, jax.Array], jax.Array], disc_params: Any,
               step: jax.Array, loss_config: ml_collections.ConfigDict, total_steps: int,
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """`(generator, discriminator, metrics)` losses, see the module docstring.

  `real`/`fake` are the discriminator's inputs (data and reconstruction, the
  latter differentiable w.r.t. the autoencoder); `discriminate(params, x)`
  returns patch logits; `last_layer_vjp` maps a cotangent of `fake` to the
  gradient w.r.t. the decoder's last kernel; `total_steps` (the run's) picks
  the `discriminator_schedule`.
  """
  nll = jnp.mean(jnp.abs(real - fake))
  disc_factor = discriminator_lib.adopt_weight(1.0, step, loss_config.disc_start)

  def adversarial(fake):
    frozen_disc = jax.lax.stop_gradient(disc_params)
    nll_fn = lambda x: jnp.mean(jnp.abs(real - x))
    g_fn = lambda x: discriminator_lib.generator_adv_loss(discriminate(frozen_disc, x))
    nll_cotangent = jax.grad(nll_fn)(fake)
    g_loss, g_cotangent = jax.value_and_grad(g_fn)(fake)
    d_weight = loss_config.disc_weight * discriminator_lib.adaptive_weight(
        last_layer_vjp(nll_cotangent), last_layer_vjp(g_cotangent))
    logits_real = discriminate(disc_params, jax.lax.stop_gradient(real))
    logits_fake = discriminate(disc_params, jax.lax.stop_gradient(fake))
    d_loss = D_LOSSES[loss_config.disc_loss](logits_real, logits_fake)
    return dict(g_loss=g_loss, d_loss=d_loss, d_weight=d_weight,
                logits_real=jnp.mean(logits_real), logits_fake=jnp.mean(logits_fake))

  def skipped(fake):  # Before disc_start: the discriminator is not run at all.
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(adversarial, fake))

  schedule = discriminator_schedule(loss_config, total_steps)
  if schedule == 'off':
    terms = skipped(fake)
  elif schedule == 'every_step':
    terms = adversarial(fake)  # Weighted by disc_factor below: zero before disc_start.
  else:  # lax.cond runs one branch, so steps before `disc_start` cost only the nll.
    terms = jax.lax.cond(disc_factor > 0, adversarial, skipped, fake)
  generator = nll + disc_factor * terms['d_weight'] * terms['g_loss']
  metrics = dict(terms, rec_loss=nll, disc_factor=disc_factor)
  return generator, disc_factor * terms['d_loss'], metrics
