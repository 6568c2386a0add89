"""Standard feature networks: structure, loading the documented weights layout, clear errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.evaluation import i3d
from videoldm.evaluation import inception
from videoldm.evaluation import metrics
from videoldm.evaluation import weights


def random_variables(module, example, seed=0):
  """Random params and non-trivial batch statistics (so BN is not the identity)."""
  variables = jax.jit(module.init)(jax.random.key(seed), example)
  stats = jax.tree.map(lambda s: jnp.abs(jax.random.normal(jax.random.key(1), s.shape)) + 0.5,
                       variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': stats}


@pytest.fixture(scope='module')
def inception_file(tmp_path_factory):
  module = inception.InceptionV3(input_size=75)
  example = jnp.zeros((1, 32, 32, 3))
  variables = random_variables(module, example)
  path = str(tmp_path_factory.mktemp('inception') / 'inception.npz')
  weights.save_variables(path, variables)
  return path, module, variables


@pytest.fixture(scope='module')
def i3d_file(tmp_path_factory):
  module = i3d.I3D(input_size=32)
  example = jnp.zeros((1, 4, 32, 32, 3))
  variables = random_variables(module, example)
  path = str(tmp_path_factory.mktemp('i3d') / 'i3d.npz')
  weights.save_variables(path, variables)
  return path, module, variables


def test_inception_structure_and_loading(inception_file):
  path, module, variables = inception_file
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  assert 21_700_000 < count < 21_900_000  # torchvision's Inception-v3 without the classifier.
  extractor = inception.InceptionExtractor(path, input_size=75)
  videos = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 32, 32, 3)).astype(np.float32)
  features = extractor.frame_features(videos)
  assert features.shape == (2, 3, 2048)
  direct = module.apply(variables, jnp.asarray(videos[:, 1]))
  np.testing.assert_allclose(features[:, 1], direct, rtol=1e-4, atol=1e-5)


def test_i3d_structure_and_loading(i3d_file):
  path, module, variables = i3d_file
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  assert 12_600_000 < count < 12_800_000  # About 12.7M with the 400-way Logits layer.
  extractor = i3d.I3DExtractor(path, input_size=32)
  videos = np.random.default_rng(1).uniform(-1, 1, size=(3, 4, 32, 32, 3)).astype(np.float32)
  features = extractor.clip_features(videos)
  assert features.shape == (3, 400)
  np.testing.assert_allclose(features, module.apply(variables, jnp.asarray(videos))[0],
                             rtol=1e-4, atol=1e-5)
  distance = metrics.fvd(extractor, videos, videos)
  assert abs(distance) < 1e-6


def test_mismatched_weights_files_are_rejected(i3d_file, tmp_path):
  path, module, variables = i3d_file
  flat = weights.flatten_variables(variables)
  name = 'params/Mixed_4b/Branch_0_Conv3d_0a_1x1/conv_3d/kernel'
  broken = dict(flat, **{name: flat[name][..., :-1]})
  np.savez(tmp_path / 'shape.npz', **broken)
  # The converters' report (convert.common.raise_on_mismatch): name, found and expected shape.
  with pytest.raises(ValueError, match=re.escape(
      f'mis-shaped: {name} {broken[name].shape} (expected flax shape {flat[name].shape})')):
    i3d.I3DExtractor(str(tmp_path / 'shape.npz'), input_size=32)
  missing = {k: v for k, v in flat.items() if 'Logits' not in k}
  np.savez(tmp_path / 'missing.npz', **missing, extra=np.zeros(3))
  with pytest.raises(ValueError, match=r'missing from the weights file: params/Logits/.*; '
                                       r'unexpected in the weights file: extra\.$'):
    i3d.I3DExtractor(str(tmp_path / 'missing.npz'), input_size=32)
  with pytest.raises(ValueError, match='does not match InceptionV3'):
    inception.InceptionExtractor(path, input_size=75)  # An I3D file is not an Inception file.
  with pytest.raises(FileNotFoundError, match='does not exist'):
    inception.InceptionExtractor(str(tmp_path / 'nope.npz'))
