"""`diffusion.sampling`: options from configs, and Eq. 4's branches in one model call."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from videoldm import diffusion
from videoldm.diffusion import sampling

_SHAPE = (2, 3, 4, 4, 2)  # (b, f, h, w, c)


def test_options_take_the_sampling_keys_of_a_config_and_only_non_none_overrides():
  config = ml_collections.ConfigDict(dict(
      num_steps=7, eta=0.5, timestep_spacing='leading', steps_offset=1, set_alpha_to_one=False,
      guidance_scale=3.0, context_guidance=2.0, num_context=2, upsampler_noise_level=50))
  options = sampling.SamplingOptions.from_config(config)
  assert options == sampling.SamplingOptions(7, 0.5, 'leading', 1, False, 3.0, 2.0)
  changed = options.replace(num_steps=None, eta=0.0, guidance_scale=6.0, context_guidance=None)
  assert (changed.num_steps, changed.eta, changed.guidance_scale, changed.context_guidance) == (
      7, 0.0, 6.0, 2.0)


def _spy_model(calls=None):
  """A denoiser of (x, t, cond, known, mask); records every call's inputs into `calls`."""
  def model_fn(x, t, cond, known, mask):
    if calls is not None:
      calls.append((x.shape[0], np.asarray(cond), np.asarray(known), np.asarray(mask)))
    visible = known * mask[:, :, None, None, None]
    return 0.1 * x + 0.01 * cond[:, None, None, None, None] + 0.2 * visible
  return model_fn


def _window():
  known = jax.random.normal(jax.random.key(0), _SHAPE)
  mask = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  return known, mask


def test_eq4_branches_are_null_without_context_null_with_context_then_conditioned():
  known, mask = _window()
  calls = []
  options = sampling.SamplingOptions(num_steps=3, context_guidance=2.0, guidance_scale=5.0)
  schedule = diffusion.make_schedule('scaled_linear', 1000)
  cond, null = jnp.array([3.0, 7.0]), jnp.array([10.0, 10.0])
  with jax.disable_jit():  # The scan runs step by step, so the spy sees values.
    sampling.context_guided_sample(_spy_model(calls), known, mask, cond, null,
                                   jax.random.key(1), schedule, 'eps', options)
  assert len(calls) == 3  # One batched call per DDIM step.
  batch, conds, contexts, masks = calls[0]
  assert batch == 3 * 2
  np.testing.assert_array_equal(conds, [10, 10, 10, 10, 3, 7])
  np.testing.assert_array_equal(masks, np.concatenate([np.zeros_like(mask), mask, mask]))
  np.testing.assert_array_equal(contexts, np.concatenate([known] * 3))


def test_eq4_guidance_combines_the_branch_outputs_with_both_scales():
  """One DDIM step from x_T with eta 0 is linear in the guided eps, so it shows the weights."""
  known, mask = _window()
  schedule = diffusion.make_schedule('scaled_linear', 1000)
  cond, null = jnp.array([3.0, 7.0]), jnp.array([10.0, 10.0])
  options = sampling.SamplingOptions(num_steps=1, context_guidance=2.0, guidance_scale=5.0)
  model_fn = _spy_model()
  key = jax.random.key(2)
  out = sampling.context_guided_sample(model_fn, known, mask, cond, null, key, schedule, 'eps',
                                       options)

  def eps(x, t):  # Eq. 4 + CFG written out by hand, branch by branch.
    outputs = [model_fn(x, t, c, known, m) for c, m in
               ((null, jnp.zeros_like(mask)), (null, mask), (cond, mask))]
    return outputs[0] + 2.0 * (outputs[1] - outputs[0]) + 5.0 * (outputs[2] - outputs[1])

  noise = jax.random.normal(key, known.shape)
  keep = mask[:, :, None, None, None]

  def denoise(x_t, t):
    alpha = diffusion.expand_to(schedule.alpha(t), known.ndim)
    sigma = diffusion.expand_to(schedule.sigma(t), known.ndim)
    return eps(keep * (alpha * known + sigma * noise) + (1.0 - keep) * x_t, t)

  expected = diffusion.ddim_sample(denoise, noise, key, schedule, num_steps=1, eta=0.0,
                                   prediction_type='eps', timestep_spacing='trailing')
  np.testing.assert_allclose(out, keep * known + (1.0 - keep) * expected, rtol=1e-5, atol=1e-5)


def test_without_a_context_branch_only_text_guidance_remains():
  known, mask = _window()
  calls = []
  options = sampling.SamplingOptions(num_steps=2, guidance_scale=4.0)
  schedule = diffusion.make_schedule('scaled_linear', 1000)
  with jax.disable_jit():
    sampling.context_guided_sample(_spy_model(calls), known, mask, jnp.array([1.0, 2.0]),
                                   jnp.array([0.0, 0.0]), jax.random.key(3), schedule, 'eps',
                                   options, context_branch=False)
  assert len(calls) == 2
  batch, conds, _, masks = calls[0]
  assert batch == 2 * 2
  np.testing.assert_array_equal(conds, [0, 0, 1, 2])
  np.testing.assert_array_equal(masks, np.concatenate([mask, mask]))
