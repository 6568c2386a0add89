"""C3D (Tran et al. 2015), the UCF-101 clip classifier behind video Inception Score, in Flax.

Eight 3x3x3 convolutions with bias + ReLU (`conv1` 64, `conv2` 128, `conv3a/b`
256, `conv4a/b` 512, `conv5a/b` 512), max pools (1,2,2) after conv1 and
(2,2,2) after conv2, conv3b, conv4b and conv5b (the last padded by one pixel
in h and w), then `fc6` 4096, `fc7` 4096 (ReLU) and `fc8` over the classes
(101 for UCF-101). The pooled volume is flattened channel-first, as PyTorch's
`view` on `(b, c, t, h, w)`, so converted `fc6` weights are used as they are.
Clips `(b, 16, h, w, 3)` in [-1, 1] are resized per frame to 112x112
(bilinear, no antialiasing), mapped to [0, 255] and the per-channel `mean`
(a field stored in the weights file) is subtracted. No weights ship with the
project; `convert/feature_networks.py` converts a PyTorch state dict.
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videoldm.evaluation import weights

CONVS = (('conv1', 64), ('conv2', 128), ('conv3a', 256), ('conv3b', 256), ('conv4a', 512),
         ('conv4b', 512), ('conv5a', 512), ('conv5b', 512))
POOL_AFTER = {'conv1': (1, 2, 2), 'conv2': (2, 2, 2), 'conv3b': (2, 2, 2), 'conv4b': (2, 2, 2),
              'conv5b': (2, 2, 2)}
INPUT_FRAMES, INPUT_SIZE = 16, 112


class C3D(nn.Module):
  """Clips `(b, 16, h, w, 3)` in [-1, 1] -> class logits `(b, num_classes)`."""
  num_classes: int = 101
  mean: tuple[float, float, float] = (0.0, 0.0, 0.0)

  @nn.compact
  def __call__(self, video):
    b, f = video.shape[:2]
    if f != INPUT_FRAMES:
      raise ValueError(f'C3D takes clips of {INPUT_FRAMES} frames, got {f}.')
    frames = einops.rearrange(video, 'b f h w c -> (b f) h w c')  # (b f) h w c
    frames = jax.image.resize(frames, (b * f, INPUT_SIZE, INPUT_SIZE, 3), 'bilinear',
                              antialias=False)
    x = (frames + 1.0) * 127.5 - jnp.asarray(self.mean, frames.dtype)
    x = einops.rearrange(x, '(b f) h w c -> b f h w c', b=b)  # b 16 112 112 3
    for name, width in CONVS:
      x = nn.relu(nn.Conv(width, (3, 3, 3), padding=1, name=name)(x))
      if name in POOL_AFTER:
        pad = ((0, 0), (1, 1), (1, 1)) if name == 'conv5b' else 'VALID'
        # ReLU outputs are >= 0, so the -inf padding of max_pool equals PyTorch's.
        x = nn.max_pool(x, POOL_AFTER[name], POOL_AFTER[name], pad)
    x = einops.rearrange(x, 'b t h w c -> b (c t h w)')  # b 8192, PyTorch's order
    x = nn.relu(nn.Dense(4096, name='fc6')(x))
    x = nn.relu(nn.Dense(4096, name='fc7')(x))
    return nn.Dense(self.num_classes, name='fc8')(x)


class C3DClassifier:
  """Class probabilities of 16-frame clips from a C3D weights file (video IS)."""

  def __init__(self, path: str, batch_size: int = 8):
    fields = weights.read_fields(path)
    fields['mean'] = tuple(np.reshape(fields.get('mean', (0.0, 0.0, 0.0)), 3).tolist())
    self.module = C3D(**fields)
    self.variables = weights.load_variables(path, self.module,
                                            jnp.zeros((1, INPUT_FRAMES, 32, 32, 3)))
    self._apply = jax.jit(lambda v, x: jax.nn.softmax(self.module.apply(v, x), axis=-1))
    self.batch_size = batch_size

  def clip_probs(self, videos) -> np.ndarray:
    """Softmax class probabilities `(b, num_classes)` of clips `(b, 16, h, w, 3)`."""
    videos = np.asarray(videos, np.float32)
    return np.concatenate([np.asarray(self._apply(self.variables, videos[i:i + self.batch_size]))
                           for i in range(0, len(videos), self.batch_size)])
