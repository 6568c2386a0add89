"""I3D (inflated Inception-v1, the FVD network) in Flax, loaded from a weights file on disk.

Follows the Kinetics-400 I3D of Carreira & Zisserman used by FVD: Unit3D =
3D conv without bias + batch norm (inference) + ReLU, TF 'SAME' padding,
Inception modules `Mixed_3b` ... `Mixed_5c`, then the reference head: average
pools over (2, 7, 7) windows (stride 1), the 1x1x1 `Logits` conv, and the mean
over the remaining positions (one window at 16 frames of 224x224). Clips
`(b, f, h, w, 3)` in [-1, 1] are resized per frame (bilinear, no antialiasing,
as `torch.nn.functional.interpolate`) to `input_size` and mapped to the 400
Kinetics logits (FVD's features) and the 1024-d pooled features. Batch-norm
epsilon is a field: 1e-3 in the TF original, 1e-5 in the PyTorch port whose
weights FVD implementations use (`convert/feature_networks.py` writes it into
the weights file). No weights ship with the project.
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videoldm.evaluation import weights

# (branch 0 1x1, branch 1 1x1 -> 3x3, branch 2 1x1 -> 3x3, branch 3 pool -> 1x1) widths.
MIXED = {
    'Mixed_3b': (64, 96, 128, 16, 32, 32), 'Mixed_3c': (128, 128, 192, 32, 96, 64),
    'Mixed_4b': (192, 96, 208, 16, 48, 64), 'Mixed_4c': (160, 112, 224, 24, 64, 64),
    'Mixed_4d': (128, 128, 256, 24, 64, 64), 'Mixed_4e': (112, 144, 288, 32, 64, 64),
    'Mixed_4f': (256, 160, 320, 32, 128, 128), 'Mixed_5b': (256, 160, 320, 32, 128, 128),
    'Mixed_5c': (384, 192, 384, 48, 128, 128),
}


class Unit3D(nn.Module):
  features: int
  kernel: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.strides, 'SAME', use_bias=False,
                name='conv_3d')(x)
    return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=self.epsilon,
                                name='batch_norm')(x))


class InceptionModule(nn.Module):
  widths: tuple[int, ...]
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x):
    w, eps = self.widths, self.epsilon
    b0 = Unit3D(w[0], epsilon=eps, name='Branch_0_Conv3d_0a_1x1')(x)
    b1 = Unit3D(w[2], (3, 3, 3), epsilon=eps, name='Branch_1_Conv3d_0b_3x3')(
        Unit3D(w[1], epsilon=eps, name='Branch_1_Conv3d_0a_1x1')(x))
    b2 = Unit3D(w[4], (3, 3, 3), epsilon=eps, name='Branch_2_Conv3d_0b_3x3')(
        Unit3D(w[3], epsilon=eps, name='Branch_2_Conv3d_0a_1x1')(x))
    # Inputs are ReLU outputs (>= 0), so -inf padding equals the reference's zero padding.
    pooled = nn.max_pool(x, (3, 3, 3), (1, 1, 1), 'SAME')
    b3 = Unit3D(w[5], epsilon=eps, name='Branch_3_Conv3d_0b_1x1')(pooled)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """Clips `(b, f, h, w, 3)` in [-1, 1] -> (logits (b, 400), features (b, 1024))."""
  input_size: int = 224
  num_classes: int = 400
  batch_norm_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, video):
    b, f = video.shape[:2]
    eps = self.batch_norm_epsilon
    frames = einops.rearrange(video, 'b f h w c -> (b f) h w c')  # (b f) h w c
    frames = jax.image.resize(frames, (b * f, self.input_size, self.input_size, 3), 'bilinear',
                              antialias=False)
    x = einops.rearrange(frames, '(b f) h w c -> b f h w c', b=b)  # b f H W c
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), eps, name='Conv3d_1a_7x7')(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), 'SAME')
    x = Unit3D(64, epsilon=eps, name='Conv3d_2b_1x1')(x)
    x = Unit3D(192, (3, 3, 3), epsilon=eps, name='Conv3d_2c_3x3')(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), 'SAME')
    for name in ('Mixed_3b', 'Mixed_3c'):
      x = InceptionModule(MIXED[name], eps, name=name)(x)
    x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), 'SAME')
    for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
      x = InceptionModule(MIXED[name], eps, name=name)(x)
    x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), 'SAME')
    for name in ('Mixed_5b', 'Mixed_5c'):
      x = InceptionModule(MIXED[name], eps, name=name)(x)
    window = tuple(min(size, dim) for size, dim in zip((2, 7, 7), x.shape[1:4]))
    x = nn.avg_pool(x, window, (1, 1, 1), 'VALID')  # b t' h' w' 1024
    features = jnp.mean(x, axis=(1, 2, 3))  # The Logits conv is linear: mean before it.
    logits = nn.Dense(self.num_classes, name='Logits')(features)
    return logits, features


class I3DExtractor:
  """FVD features (I3D logits) from an I3D weights file (`clip_features` only)."""
  suffix = ''

  def __init__(self, path: str, input_size: int = 224, batch_size: int = 8):
    self.module = I3D(input_size, **weights.read_fields(path))
    self.variables = weights.load_variables(path, self.module, jnp.zeros((1, 4, 32, 32, 3)))
    self._apply = jax.jit(lambda v, x: self.module.apply(v, x)[0])
    self.batch_size = batch_size

  def clip_features(self, videos) -> np.ndarray:
    videos = np.asarray(videos, np.float32)
    return np.concatenate([np.asarray(self._apply(self.variables, videos[i:i + self.batch_size]))
                           for i in range(0, len(videos), self.batch_size)])
