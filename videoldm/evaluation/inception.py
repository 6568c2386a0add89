"""Inception-v3 (the FID network) in Flax, loaded from a weights file on disk.

Follows the FID variant of torchvision's Inception-v3 (as in pytorch-fid):
BasicConv2d = conv without bias + batch norm (eps 1e-3, inference) + ReLU;
average pools exclude padding; the last block's pool branch is a max pool.
Frames `(n, h, w, 3)` in [-1, 1] are resized (bilinear without antialiasing,
as pytorch-fid's `F.interpolate`) to `input_size` and mapped to the 2048-d
pool features. Module names follow torchvision
(`Mixed_5b/branch1x1/conv`), so a converter only transposes kernels
(torch OIHW -> Flax HWIO) and renames bn weight/bias/running_* to
scale/bias/mean/var; the file layout is documented in `weights.py`. No weights
ship with the project (none can be downloaded here).
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videoldm.evaluation import weights


class BasicConv(nn.Module):
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.strides, self.padding, use_bias=False,
                name='conv')(x)
    return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x))


def _avg_pool(x):
  return nn.avg_pool(x, (3, 3), (1, 1), 'SAME', count_include_pad=False)


def _max_pool(x, strides=2, padding='VALID'):
  return nn.max_pool(x, (3, 3), (strides, strides), padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv(64, (5, 5), name='branch5x5_2')(BasicConv(48, (1, 1), name='branch5x5_1')(x))
    b3 = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), name='branch3x3dbl_3')(BasicConv(96, (3, 3),
                                                                 name='branch3x3dbl_2')(b3))
    pool = BasicConv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, pool], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), 2, 'VALID', name='branch3x3')(x)
    d = BasicConv(96, (3, 3), name='branch3x3dbl_2')(BasicConv(64, (1, 1),
                                                               name='branch3x3dbl_1')(x))
    d = BasicConv(96, (3, 3), 2, 'VALID', name='branch3x3dbl_3')(d)
    return jnp.concatenate([b3, d, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv(c, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv(192, (7, 1), name='branch7x7_3')(BasicConv(c, (1, 7), name='branch7x7_2')(b7))
    d = BasicConv(c, (1, 1), name='branch7x7dbl_1')(x)
    for i, (kernel, width) in enumerate((((7, 1), c), ((1, 7), c), ((7, 1), c), ((1, 7), 192))):
      d = BasicConv(width, kernel, name=f'branch7x7dbl_{i + 2}')(d)
    pool = BasicConv(192, (1, 1), name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b7, d, pool], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, (3, 3), 2, 'VALID', name='branch3x3_2')(
        BasicConv(192, (1, 1), name='branch3x3_1')(x))
    b7 = BasicConv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (7, 1), name='branch7x7x3_3')(BasicConv(192, (1, 7),
                                                                name='branch7x7x3_2')(b7))
    b7 = BasicConv(192, (3, 3), 2, 'VALID', name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  max_pool_branch: bool = False  # FID's Mixed_7c pools with max, Mixed_7b with average.

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), name='branch3x3_2a')(b3),
                          BasicConv(384, (3, 1), name='branch3x3_2b')(b3)], axis=-1)
    d = BasicConv(384, (3, 3), name='branch3x3dbl_2')(BasicConv(448, (1, 1),
                                                                name='branch3x3dbl_1')(x))
    d = jnp.concatenate([BasicConv(384, (1, 3), name='branch3x3dbl_3a')(d),
                         BasicConv(384, (3, 1), name='branch3x3dbl_3b')(d)], axis=-1)
    pooled = _max_pool(x, 1, 'SAME') if self.max_pool_branch else _avg_pool(x)
    pool = BasicConv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, d, pool], axis=-1)


class InceptionV3(nn.Module):
  """Frames `(n, h, w, 3)` in [-1, 1] -> pool features `(n, 2048)`."""
  input_size: int = 299

  @nn.compact
  def __call__(self, frames):
    x = jax.image.resize(frames, (frames.shape[0], self.input_size, self.input_size, 3),
                         'bilinear', antialias=False)
    x = BasicConv(32, (3, 3), 2, 'VALID', name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), 1, 'VALID', name='Conv2d_2a_3x3')(x)
    x = _max_pool(BasicConv(64, (3, 3), name='Conv2d_2b_3x3')(x))
    x = BasicConv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = _max_pool(BasicConv(192, (3, 3), 1, 'VALID', name='Conv2d_4a_3x3')(x))
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, channels in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                           ('Mixed_6e', 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(name='Mixed_7b')(x)
    x = InceptionE(max_pool_branch=True, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


class InceptionExtractor:
  """FID features from an Inception-v3 weights file (`frame_features` only)."""
  suffix = ''

  def __init__(self, path: str, input_size: int = 299, batch_size: int = 32):
    self.module = InceptionV3(input_size)
    self.variables = weights.load_variables(path, self.module, jnp.zeros((1, 32, 32, 3)))
    self._apply = jax.jit(lambda v, x: self.module.apply(v, x))
    self.batch_size = batch_size

  def frame_features(self, videos) -> np.ndarray:
    videos = np.asarray(videos, np.float32)
    frames = einops.rearrange(videos, 'b f h w c -> (b f) h w c')  # (b f) h w c
    out = np.concatenate([np.asarray(self._apply(self.variables, frames[i:i + self.batch_size]))
                          for i in range(0, len(frames), self.batch_size)])
    return einops.rearrange(out, '(b f) d -> b f d', b=len(videos))
