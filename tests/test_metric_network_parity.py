"""Converted metric networks match the published PyTorch definitions (random weights).

Each reference is built as published (pytorch-fid's InceptionV3 with the FID
blocks; cd-fvd's `InceptionI3d` with its preprocessing), given a random state
dict in place of the download, converted with `convert.feature_networks`,
written to and read from a weights file, and compared on the same videos.
"""

import inspect

import numpy as np
import pytest
import torch

import metric_references
from videoldm.convert import feature_networks
from videoldm.evaluation import c3d
from videoldm.evaluation import i3d
from videoldm.evaluation import inception
from videoldm.evaluation import weights

torch.set_grad_enabled(False)


def randomized(state_dict, seed: int) -> dict:
  """Random weights and batch-norm statistics (so no normalisation is an identity)."""
  generator = torch.Generator().manual_seed(seed)
  rand = lambda t, low, high: torch.rand(t.shape, generator=generator) * (high - low) + low
  out = {}
  for name, value in state_dict.items():
    if name.endswith('num_batches_tracked') or not value.is_floating_point():
      out[name] = value
    elif name.endswith('running_var'):
      out[name] = rand(value, 0.5, 1.5)
    elif name.endswith(('running_mean', 'bias')):
      out[name] = rand(value, -0.1, 0.1)
    elif '.bn.' in name:  # Batch-norm scale.
      out[name] = rand(value, 0.5, 1.5)
    else:  # Convolution and linear weights at a variance-keeping scale.
      fan_in = value[0].numel()
      out[name] = torch.randn(value.shape, generator=generator) * np.sqrt(2.0 / fan_in)
  return out


def relative_error(ours, reference) -> float:
  reference = np.asarray(reference, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - reference))
               / np.max(np.abs(reference)))


def convert_to_file(network, state_dict, path, **kwargs):
  feature_networks.convert(network, {k: v.numpy() for k, v in state_dict.items()}, str(path),
                           **kwargs)
  return str(path)


def test_inception_matches_pytorch_fid(monkeypatch, tmp_path):
  reference = metric_references.pytorch_fid_inception()
  published = {}

  def random_fid_weights(*args, **kwargs):
    del args, kwargs  # In place of the FID weights download: the model being built, randomized.
    model = inspect.currentframe().f_back.f_locals['inception']
    published.update(randomized(model.state_dict(), seed=0))
    return published

  monkeypatch.setattr(reference, 'load_state_dict_from_url', random_fid_weights)
  model = reference.InceptionV3([reference.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  extractor = inception.InceptionExtractor(convert_to_file('inception', published,
                                                           tmp_path / 'inception.npz'))
  # Larger than 299 in both sides, so the resize is a downsampling (no antialiasing in either).
  videos = np.random.default_rng(0).uniform(-1, 1, (1, 2, 320, 336, 3)).astype(np.float32)
  ours = extractor.frame_features(videos)[0]
  frames = torch.from_numpy((videos[0] + 1) / 2).permute(0, 3, 1, 2)  # [0, 1], NCHW
  expected = model(frames)[0][:, :, 0, 0].numpy()
  assert np.std(expected) > 1e-3  # Random weights keep the features alive.
  assert relative_error(ours, expected) < 1e-4


def test_i3d_matches_cdfvd(tmp_path):
  reference = metric_references.cdfvd_i3d()
  model = reference.pytorch_i3d.InceptionI3d(400, in_channels=3).eval()
  model.load_state_dict(randomized(model.state_dict(), seed=1))
  path = convert_to_file('i3d', model.state_dict(), tmp_path / 'i3d.npz')
  assert weights.read_fields(path) == {'batch_norm_epsilon': 1e-5}
  videos = np.random.default_rng(1).integers(0, 256, (1, 16, 96, 120, 3), dtype=np.uint8)
  expected = model(reference.preprocess_i3d(videos)).numpy()
  ours = i3d.I3DExtractor(path).clip_features(videos.astype(np.float32) / 127.5 - 1)
  assert np.std(expected) > 1e-3
  assert relative_error(ours, expected) < 1e-4


class TorchC3D(torch.nn.Module):
  """C3D in the layout of the published PyTorch ports (c3d-pytorch): (b, 3, 16, 112, 112)."""

  def __init__(self, num_classes: int):
    super().__init__()
    inputs = [3] + [w for _, w in c3d.CONVS[:-1]]
    for (name, width), fan_in in zip(c3d.CONVS, inputs):
      setattr(self, name, torch.nn.Conv3d(fan_in, width, 3, padding=1))
    self.fc6, self.fc7 = torch.nn.Linear(8192, 4096), torch.nn.Linear(4096, 4096)
    self.fc8 = torch.nn.Linear(4096, num_classes)

  def forward(self, x):
    for name, _ in c3d.CONVS:
      x = torch.relu(getattr(self, name)(x))
      if name in c3d.POOL_AFTER:
        size = c3d.POOL_AFTER[name]
        x = torch.nn.functional.max_pool3d(x, size, size,
                                           padding=(0, 1, 1) if name == 'conv5b' else 0)
    x = torch.relu(self.fc6(x.reshape(-1, 8192)))
    return self.fc8(torch.relu(self.fc7(x)))


def test_c3d_matches_the_pytorch_layout(tmp_path):
  model = TorchC3D(num_classes=101).eval()
  state_dict = randomized(model.state_dict(), seed=2)
  model.load_state_dict(state_dict)
  state_dict['conv1a.weight'] = state_dict.pop('conv1.weight')  # Both spellings are read.
  mean = (90.0, 98.0, 102.0)
  path = convert_to_file('c3d', state_dict, tmp_path / 'c3d.npz', c3d_mean=mean)
  videos = np.random.default_rng(2).uniform(-1, 1, (2, 16, 112, 112, 3)).astype(np.float32)
  pixels = torch.from_numpy((videos + 1) * 127.5 - np.asarray(mean, np.float32))
  expected = model(pixels.permute(0, 4, 1, 2, 3))
  classifier = c3d.C3DClassifier(path)
  ours = classifier.module.apply(classifier.variables, videos)  # Logits: softmax hides errors.
  assert np.std(expected.numpy()) > 1e-3
  assert relative_error(ours, expected.numpy()) < 1e-4
  np.testing.assert_allclose(classifier.clip_probs(videos), torch.softmax(expected, -1).numpy(),
                             atol=1e-5)


def test_a_state_dict_that_does_not_fit_is_named(tmp_path):
  model = TorchC3D(num_classes=101)
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  state_dict['fc9.weight'] = state_dict.pop('fc7.weight')
  with pytest.raises(ValueError, match=r'missing from the state dict: fc7/kernel; '
                                       r'unexpected in the state dict: fc9\.weight\.$'):
    feature_networks.convert('c3d', state_dict, str(tmp_path / 'x.npz'))
  with pytest.raises(ValueError, match=r"network='c4d' is not one of"):
    feature_networks.convert('c4d', state_dict, str(tmp_path / 'x.npz'))
