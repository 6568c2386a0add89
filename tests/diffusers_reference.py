"""Helpers for parity tests against diffusers PyTorch modules (random weights)."""

import jax
import numpy as np
import torch

from videoldm.convert import common
from videoldm.convert import tiny_sd


# Every parameter random, including zero/one-initialised ones (shared with tiny_sd).
randomize_ = tiny_sd.randomize_


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def flax_params_from_torch(module: torch.nn.Module, flax_module, *args, **kwargs):
  """Converts `module`'s weights into params for `flax_module(*args, **kwargs)`."""
  shapes = jax.eval_shape(flax_module.init, jax.random.key(0), *args, **kwargs)
  return common.state_dict_to_params(state_dict_numpy(module), shapes['params'])


def nchw(x: np.ndarray) -> torch.Tensor:
  """Channels-last numpy `(b, h, w, c)` -> torch `(b, c, h, w)`."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), 1, -1)


def relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
