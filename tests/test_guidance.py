"""Nested classifier-free / context guidance in one batched model call."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import diffusion

_B = 2
_SHAPE = (_B, 3, 4, 4, 2)  # (b, f, h, w, c)


class CountingModel:
  """A nonlinear toy model of (x, t, cond) that records each call's batch."""

  def __init__(self):
    self.batches = []

  def __call__(self, x, t, cond):
    self.batches.append(x.shape[0])
    context = cond['context'] * cond['mask'][..., None, None, None]  # (b, f, h, w, c)
    text = jnp.tanh(cond['text'].sum(axis=(1, 2)))  # (b,)
    time = diffusion.expand_to(t.astype(jnp.float32) / 1000.0, x.ndim)
    return jnp.sin(x + context) * (1.0 + diffusion.expand_to(text, x.ndim)) + time * x


def _conds():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  context = jax.random.normal(keys[0], _SHAPE)
  text = jax.random.normal(keys[1], (_B, 5, 8))
  no_mask, first_frame = jnp.zeros((_B, 3)), jnp.array([[1.0, 0.0, 0.0]] * _B)
  unconditional = {'context': jnp.zeros(_SHAPE), 'mask': no_mask, 'text': jnp.zeros_like(text)}
  context_only = {'context': context, 'mask': first_frame, 'text': jnp.zeros_like(text)}
  context_and_text = {'context': context, 'mask': first_frame, 'text': text}
  return [unconditional, context_only, context_and_text]


@pytest.fixture(scope='module')
def inputs():
  x = jax.random.normal(jax.random.PRNGKey(1), _SHAPE)
  t = jnp.array([700, 12], jnp.int32)
  return x, t


def test_all_branches_run_in_one_model_call(inputs):
  model = CountingModel()
  denoise_fn = diffusion.make_guided_denoiser(model, _conds(), [3.0, 7.5])
  denoise_fn(*inputs)
  assert model.batches == [3 * _B]


def test_unit_scales_telescope_to_the_most_conditioned_branch(inputs):
  conds = _conds()
  guided = diffusion.make_guided_denoiser(CountingModel(), conds, [1.0, 1.0])(*inputs)
  np.testing.assert_allclose(guided, CountingModel()(*inputs, conds[-1]), rtol=1e-5, atol=1e-6)


def test_single_scale_is_textbook_cfg_with_two_calls(inputs):
  conds = _conds()
  scale = 4.0
  guided = diffusion.make_guided_denoiser(CountingModel(), conds[::2], [scale])(*inputs)
  model = CountingModel()
  uncond, cond = model(*inputs, conds[0]), model(*inputs, conds[2])
  np.testing.assert_allclose(guided, uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_nested_scales_match_separate_calls(inputs):
  conds = _conds()
  context_scale, text_scale = 2.0, 6.0
  guided = diffusion.make_guided_denoiser(CountingModel(), conds,
                                          [context_scale, text_scale])(*inputs)
  model = CountingModel()
  f0, f1, f2 = (model(*inputs, c) for c in conds)
  expected = f0 + context_scale * (f1 - f0) + text_scale * (f2 - f1)
  np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)


def test_guidance_commutes_with_prediction_conversion(inputs):
  """Weights sum to one, so guiding eps then converting to v equals guiding v."""
  x, t = inputs
  schedule = diffusion.make_schedule()
  alpha = diffusion.expand_to(schedule.alpha(t), x.ndim)
  sigma = diffusion.expand_to(schedule.sigma(t), x.ndim)
  to_v = lambda eps: diffusion.convert_prediction(eps, x, alpha, sigma, 'eps', 'v')
  model = CountingModel()
  outputs = [model(x, t, c) for c in _conds()]
  scales = [2.0, 5.0]
  np.testing.assert_allclose(to_v(diffusion.combine_guided(outputs, scales)),
                             diffusion.combine_guided([to_v(o) for o in outputs], scales),
                             rtol=1e-4, atol=1e-4)


def test_guided_sampler_traces_the_model_once():
  schedule = diffusion.make_schedule()
  model = CountingModel()

  def denoise_fn(args, x, t):
    conds, scales = args
    return diffusion.make_guided_denoiser(model, conds, scales)(x, t)

  sampler = diffusion.make_ddim_sampler(denoise_fn, schedule, num_steps=4)
  noise = jax.random.normal(jax.random.PRNGKey(2), _SHAPE)
  first = sampler((_conds(), [2.0, 3.0]), noise, None)
  second = sampler((_conds(), [1.0, 1.0]), noise, None)
  assert model.batches == [3 * _B]  # Traced once for both calls, all branches batched.
  unguided = jax.jit(functools.partial(
      diffusion.ddim_sample, lambda x, t: CountingModel()(x, t, _conds()[-1]), schedule=schedule,
      num_steps=4))(noise, None)
  np.testing.assert_allclose(second, unguided, rtol=1e-4, atol=1e-4)
  assert not np.allclose(first, second)


def test_guidance_errors_name_the_value(inputs):
  conds = _conds()
  with pytest.raises(ValueError, match=r'scales \[1.0, 2.0\] need 3 conditionings .* got 2'):
    diffusion.make_guided_denoiser(CountingModel(), conds[:2], [1.0, 2.0])
  with pytest.raises(ValueError, match=r'scales \[7.5\] need 2 conditionings .* got 1'):
    diffusion.make_guided_denoiser(CountingModel(), conds[:1], [7.5])
  with pytest.raises(ValueError, match='got none'):
    diffusion.make_guided_denoiser(CountingModel(), [], [])
  with pytest.raises(ValueError, match='Conditioning 1 has structure'):
    diffusion.make_guided_denoiser(CountingModel(), [conds[0], {'text': conds[1]['text']}], [2.0])
  with pytest.raises(ValueError, match=r'Conditioning 0 has a leaf of shape \(\)'):
    diffusion.make_guided_denoiser(CountingModel(), [{'s': 1.0}, {'s': 2.0}], [2.0])
  bad_batch = [jax.tree.map(lambda leaf: leaf[:1], c) for c in conds]
  with pytest.raises(ValueError, match=r'leading axis 2'):
    diffusion.make_guided_denoiser(CountingModel(), bad_batch, [2.0, 3.0])(*inputs)
