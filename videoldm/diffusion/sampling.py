"""Sampling a trained denoiser: DDIM with its options, known frames, context guidance.

Every sampler of the codebase goes through here, so each sampling knob has one
name from the command line (`videoldm.sample --guidance_scale`) through
`SamplingOptions` to the DDIM call.

  guided_sample          DDIM with nested classifier-free guidance (`guidance`)
  sample_with_known      the same, with some frames given (prediction and
                         interpolation models, paper Sec. 3.2 / 3.3)
  context_guided_sample  paper Eq. 4: context guidance over the known frames
                         plus classifier-free guidance on labels or text, its
                         three branches in one batched model call
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from videoldm.diffusion import ddim
from videoldm.diffusion import guidance
from videoldm.diffusion import schedules

# model_fn(x, t, cond, known, mask) of a context-conditioned denoiser.
ContextModelFn = Callable[[jax.Array, jax.Array, Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How to sample: DDIM settings and guidance scales (a stage's `config.sampling`)."""
  num_steps: int
  eta: float = 0.0
  timestep_spacing: str = 'trailing'
  steps_offset: int = 0
  set_alpha_to_one: bool = True
  guidance_scale: float = 1.0  # Classifier-free guidance on labels or text.
  context_guidance: float = 1.0  # Context guidance on the known frames (Eq. 4).

  @classmethod
  def from_config(cls, sampling: ml_collections.ConfigDict) -> 'SamplingOptions':
    """The options named in `sampling` (other keys there belong to the stage)."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in sampling.items() if name in names})

  def replace(self, **overrides) -> 'SamplingOptions':
    """These options with every override that is not None."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def ddim_with_options(denoise_fn, noise: jax.Array, key: jax.Array,
                      schedule: schedules.Schedule, prediction_type: str,
                      options: SamplingOptions) -> jax.Array:
  """`ddim.ddim_sample` of `denoise_fn(x_t, t)` from `noise` with `options`."""
  return ddim.ddim_sample(
      denoise_fn, noise, key, schedule, num_steps=options.num_steps, eta=options.eta,
      prediction_type=prediction_type, timestep_spacing=options.timestep_spacing,
      steps_offset=options.steps_offset, set_alpha_to_one=options.set_alpha_to_one)


def guided_sample(model_fn: guidance.ModelFn, conds, scales, noise: jax.Array, key: jax.Array,
                  schedule: schedules.Schedule, prediction_type: str,
                  options: SamplingOptions) -> jax.Array:
  """DDIM with nested guidance over `conds` (least conditioned first) and `scales`."""
  denoise = guidance.make_guided_denoiser(model_fn, conds, scales)
  return ddim_with_options(denoise, noise, key, schedule, prediction_type, options)


def sample_with_known(model_fn: guidance.ModelFn, conds, scales, known: jax.Array,
                      mask: jax.Array, key: jax.Array, schedule: schedules.Schedule,
                      prediction_type: str, options: SamplingOptions) -> jax.Array:
  """`guided_sample` of latents `(b, f, h, w, c)` whose `mask` `(b, f)` frames are `known`.

  At every step the known frames enter the model forward-noised,
  `x_t = alpha_t known + sigma_t eps` with one fixed eps, exactly as the model
  saw context frames in training (the sampler's own estimate of them is never
  fed back), and they are copied unchanged into the result.
  """
  noise = jax.random.normal(key, known.shape)
  keep = mask[:, :, None, None, None]
  guided = guidance.make_guided_denoiser(model_fn, conds, scales)

  def denoise(x_t, t):
    alpha = schedules.expand_to(schedule.alpha(t), known.ndim)
    sigma = schedules.expand_to(schedule.sigma(t), known.ndim)
    return guided(keep * (alpha * known + sigma * noise) + (1.0 - keep) * x_t, t)

  z = ddim_with_options(denoise, noise, key, schedule, prediction_type, options)
  return keep * known + (1.0 - keep) * z


def context_guided_sample(model_fn: ContextModelFn, known: jax.Array, mask: jax.Array,
                          cond: Any, null_cond: Any, key: jax.Array,
                          schedule: schedules.Schedule, prediction_type: str,
                          options: SamplingOptions, context_branch: bool = True) -> jax.Array:
  """Paper Eq. 4 with classifier-free guidance, one batched model call per step.

  Branches (least conditioned first): `null_cond` without context frames;
  `null_cond` with the `mask` frames of `known`; `cond` with them, weighted by
  `options.context_guidance` and `options.guidance_scale`. With
  `context_branch=False` (a model that takes no context frames) only the last
  two, weighted by `options.guidance_scale`. `model_fn(x, t, cond, known,
  mask)` sees every branch stacked on the batch axis, `known` repeated to match.
  """
  if context_branch:
    conds = [(null_cond, jnp.zeros_like(mask)), (null_cond, mask), (cond, mask)]
    scales = [options.context_guidance, options.guidance_scale]
  else:
    conds, scales = [(null_cond, mask), (cond, mask)], [options.guidance_scale]

  def branch_fn(x, t, branch):
    branch_cond, branch_mask = branch
    repeats = x.shape[0] // known.shape[0]
    context = jnp.concatenate([known] * repeats, axis=0)
    return model_fn(x, t, branch_cond, context, branch_mask)

  return sample_with_known(branch_fn, conds, scales, known, mask, key, schedule,
                           prediction_type, options)
