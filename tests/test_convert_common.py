"""The mechanical torch <-> flax name and layout mapping."""

import jax
import numpy as np
import pytest

from videoldm.convert import common


def _target():
  s = jax.ShapeDtypeStruct
  return {
      'conv_in': {'kernel': s((3, 3, 4, 8), np.float32), 'bias': s((8,), np.float32)},
      'time_embedding': {'linear_1': {'kernel': s((8, 16), np.float32),
                                      'bias': s((16,), np.float32)}},
      'blocks_0': {'norm': {'scale': s((8,), np.float32), 'bias': s((8,), np.float32)},
                   'to_out_0': {'kernel': s((8, 8), np.float32)}},
      'token_embedding': {'embedding': s((10, 8), np.float32)},
      'temporal_conv': {'kernel': s((3, 1, 1, 8, 8), np.float32)},
  }


def _state_dict(rng):
  return {
      'conv_in.weight': rng.normal(size=(8, 4, 3, 3)).astype(np.float32),
      'conv_in.bias': rng.normal(size=(8,)).astype(np.float32),
      'time_embedding.linear_1.weight': rng.normal(size=(16, 8)).astype(np.float32),
      'time_embedding.linear_1.bias': rng.normal(size=(16,)).astype(np.float32),
      'blocks.0.norm.weight': rng.normal(size=(8,)).astype(np.float32),
      'blocks.0.norm.bias': rng.normal(size=(8,)).astype(np.float32),
      'blocks.0.to_out.0.weight': rng.normal(size=(8, 8)).astype(np.float32),
      'token_embedding.weight': rng.normal(size=(10, 8)).astype(np.float32),
      'temporal_conv.weight': rng.normal(size=(8, 8, 3, 1, 1)).astype(np.float32),
  }


def test_layouts_follow_the_leaf_kind():
  sd = _state_dict(np.random.default_rng(0))
  params = common.state_dict_to_params(sd, _target())
  np.testing.assert_array_equal(params['conv_in']['kernel'][1, 2, 3, 5],
                                sd['conv_in.weight'][5, 3, 1, 2])
  np.testing.assert_array_equal(params['time_embedding']['linear_1']['kernel'],
                                sd['time_embedding.linear_1.weight'].T)
  np.testing.assert_array_equal(params['blocks_0']['norm']['scale'],
                                sd['blocks.0.norm.weight'])
  np.testing.assert_array_equal(params['token_embedding']['embedding'],
                                sd['token_embedding.weight'])
  np.testing.assert_array_equal(params['temporal_conv']['kernel'][2, 0, 0, 1, 4],
                                sd['temporal_conv.weight'][4, 1, 2, 0, 0])


def test_round_trip_is_bit_exact():
  sd = _state_dict(np.random.default_rng(1))
  back = common.params_to_state_dict(common.state_dict_to_params(sd, _target()))
  assert sorted(back) == sorted(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize('change, message', [
    (lambda sd: sd.pop('conv_in.bias'), 'missing from the state dict: conv_in/bias'),
    (lambda sd: sd.update({'extra.weight': np.zeros(3)}), 'unexpected in the state dict: extra.weight'),
    (lambda sd: sd.update({'conv_in.bias': np.zeros(9, np.float32)}), r'mis-shaped: conv_in.bias \(9,\)'),
])
def test_strict_errors_name_the_tensor(change, message):
  sd = _state_dict(np.random.default_rng(2))
  change(sd)
  with pytest.raises(ValueError, match=message):
    common.state_dict_to_params(sd, _target())


def test_one_error_names_every_problem_with_found_and_expected_shapes():
  sd = _state_dict(np.random.default_rng(3))
  sd.pop('conv_in.bias')
  sd['extra.weight'] = np.zeros(3)
  sd['conv_in.weight'] = np.zeros((8, 4, 3, 2), np.float32)
  with pytest.raises(ValueError) as error:
    common.state_dict_to_params(sd, _target())
  assert str(error.value) == (
      'State dict does not match the model; missing from the state dict: conv_in/bias; '
      'unexpected in the state dict: extra.weight; mis-shaped: conv_in.weight (8, 4, 3, 2) '
      '(expected flax shape (3, 3, 4, 8) for conv_in/kernel).')


def test_mismatch_report_lists_at_most_twenty_names_and_passes_when_all_match():
  common.raise_on_mismatch('Weights file', 'I3D', 'the weights file')  # Nothing to report.
  with pytest.raises(ValueError, match=r'^Weights file does not match I3D; missing from the '
                                       r'weights file: a00, a01, .*, a19 \(and 5 more\); '
                                       r'mis-shaped: w \(2,\) \(expected flax shape \(3,\)\)\.$'):
    common.raise_on_mismatch('Weights file', 'I3D', 'the weights file',
                             missing=[f'a{i:02d}' for i in range(25)],
                             misshaped=[('w', (2,), (3,), None)])
