r"""Converts the published PyTorch weights of the metric networks into weights files.

Run once where PyTorch is installed; the `.npz` it writes (layout:
`evaluation/weights.py`) is then used without PyTorch:

  python -m videoldm.convert.feature_networks --network=inception \
      --torch_file=pt_inception-2015-12-05-6726825d.pth --out=weights/inception_fid.npz
  python -m videoldm.convert.feature_networks --network=i3d \
      --torch_file=i3d_pretrained_400.pt --out=weights/i3d_fvd.npz
  python -m videoldm.convert.feature_networks --network=c3d \
      --torch_file=c3d_ucf101.pth --out=weights/c3d_ucf101.npz [--c3d_mean=R,G,B]

Sources: `inception` — pytorch-fid's FID Inception (torchvision `Inception3`
names; the classifier `fc` is dropped); `i3d` — the Kinetics-400 I3D in the
PyTorch port used by TATS and content-debiased FVD (`InceptionI3d` names,
batch-norm eps 1e-5, written into the file); `c3d` — a C3D state dict with
`conv1 ... conv5b, fc6, fc7, fc8` names (`conv1a`/`conv2a` also read). A
TorchScript archive is read through its state dict, a checkpoint dict through
its `state_dict` entry, and DataParallel's `module.` prefixes are removed. The
conversion is strict: every parameter of the Flax network must be filled, and
every name or shape that does not fit is named in one error.
"""

import re

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from videoldm import outputs
from videoldm.convert import common
from videoldm.evaluation import c3d
from videoldm.evaluation import i3d
from videoldm.evaluation import inception
from videoldm.evaluation import weights

NETWORKS = ('inception', 'i3d', 'c3d')
I3D_BRANCHES = {'b0': 'Branch_0_Conv3d_0a_1x1', 'b1a': 'Branch_1_Conv3d_0a_1x1',
                'b1b': 'Branch_1_Conv3d_0b_3x3', 'b2a': 'Branch_2_Conv3d_0a_1x1',
                'b2b': 'Branch_2_Conv3d_0b_3x3', 'b3b': 'Branch_3_Conv3d_0b_1x1'}
I3D_TORCH_EPSILON = 1e-5


def _split_batch_norm(state_dict):
  """(params state dict, {flax batch_stats path: array}) of a state dict with BatchNorms."""
  params, stats = {}, {}
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      continue
    module, _, leaf = key.rpartition('.')
    if leaf in ('running_mean', 'running_var'):
      path = common.torch_key_to_flax_path(module)
      stats[path + ({'running_mean': 'mean', 'running_var': 'var'}[leaf],)] = np.asarray(value)
    else:
      params[key] = np.asarray(value)
  return params, stats


def _variables(module, example, state_dict, rename, ignore=None):
  """Flax variables of `module` filled from `state_dict` (strict both ways)."""
  target = jax.eval_shape(lambda: module.init(jax.random.key(0), example))
  params_sd, stats = _split_batch_norm(
      {rename(k): v for k, v in state_dict.items() if not (ignore and ignore(k))})
  params = common.state_dict_to_params(params_sd, target['params'])
  variables = {'params': params}
  if 'batch_stats' in target:
    expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(target['batch_stats']))
    misshaped = [('/'.join(p), stats[p].shape, expected[p].shape, None)
                 for p in set(expected) & set(stats) if stats[p].shape != expected[p].shape]
    common.raise_on_mismatch('State dict', type(module).__name__, 'the state dict',
                             missing=['/'.join(p) for p in set(expected) - set(stats)],
                             unexpected=['/'.join(p) for p in set(stats) - set(expected)],
                             misshaped=misshaped)
    variables['batch_stats'] = flax.traverse_util.unflatten_dict(
        {p: np.asarray(v, np.float32) for p, v in stats.items()})
  return variables


def inception_variables(state_dict) -> tuple[dict, dict]:
  """(variables, fields) of `inception.InceptionV3` from pytorch-fid's FID Inception."""
  ignore = lambda key: key.startswith(('fc.', 'AuxLogits.'))
  variables = _variables(inception.InceptionV3(), jnp.zeros((1, 32, 32, 3)), state_dict,
                         lambda key: key, ignore)
  return variables, {}


def _i3d_name(key: str) -> str:
  key = re.sub(r'^logits\.conv3d\.', 'Logits.', key)
  key = re.sub(r'\.conv3d\.', '.conv_3d.', key)
  key = re.sub(r'\.bn\.', '.batch_norm.', key)
  return re.sub(r'^(Mixed_\w+)\.(b\w+)\.', lambda m: f'{m[1]}.{I3D_BRANCHES.get(m[2], m[2])}.',
                key)


def i3d_variables(state_dict, epsilon: float = I3D_TORCH_EPSILON) -> tuple[dict, dict]:
  """(variables, fields) of `i3d.I3D` from the PyTorch `InceptionI3d` state dict."""
  state_dict = dict(state_dict)
  if 'logits.conv3d.weight' in state_dict:  # The 1x1x1 logits conv is a Dense layer here.
    weight = np.asarray(state_dict['logits.conv3d.weight'])
    state_dict['logits.conv3d.weight'] = weight.reshape(weight.shape[:2])
  fields = {'batch_norm_epsilon': float(epsilon)}
  module = i3d.I3D(input_size=32, **fields)
  return _variables(module, jnp.zeros((1, 4, 32, 32, 3)), state_dict, _i3d_name), fields


def c3d_variables(state_dict, mean=(0.0, 0.0, 0.0)) -> tuple[dict, dict]:
  """(variables, fields) of `c3d.C3D` from a C3D state dict (`fc8` sets the classes)."""
  rename = lambda key: re.sub(r'^conv([12])a\.', r'conv\1.', key)
  if 'fc8.weight' not in state_dict:
    raise ValueError('A C3D state dict needs fc8.weight (the classifier); found '
                     f'{sorted(state_dict)[:8]}...')
  fields = {'num_classes': int(np.shape(state_dict['fc8.weight'])[0]),
            'mean': tuple(float(m) for m in mean)}
  module = c3d.C3D(**fields)
  return _variables(module, jnp.zeros((1, c3d.INPUT_FRAMES, 32, 32, 3)), state_dict,
                    rename), fields


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict (plain, in a checkpoint dict, or a TorchScript archive) as numpy."""
  import torch  # pylint: disable=g-import-not-at-top  (conversion only)
  try:
    state_dict = torch.jit.load(path, map_location='cpu').state_dict()
  except RuntimeError:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  if 'state_dict' in state_dict:
    state_dict = state_dict['state_dict']
  return {re.sub(r'^module\.', '', key): value.detach().cpu().numpy()
          for key, value in state_dict.items()}


def convert(network: str, state_dict, out: str, c3d_mean=(0.0, 0.0, 0.0)) -> None:
  """Writes the weights file of `network` converted from `state_dict`."""
  if network == 'inception':
    variables, fields = inception_variables(state_dict)
  elif network == 'i3d':
    variables, fields = i3d_variables(state_dict)
  elif network == 'c3d':
    variables, fields = c3d_variables(state_dict, c3d_mean)
  else:
    raise ValueError(f'network={network!r} is not one of {NETWORKS}.')
  weights.save_variables(out, variables, fields)


_NETWORK = flags.DEFINE_enum('network', None, NETWORKS, 'Which network the file holds.')
_TORCH_FILE = flags.DEFINE_string('torch_file', None, 'The published PyTorch weights.')
_OUT = flags.DEFINE_string('out', None, 'The .npz to write.')
_C3D_MEAN = flags.DEFINE_list('c3d_mean', ['0', '0', '0'],
                              'Per-channel mean (0-255) the C3D weights expect subtracted.')


def main(argv):
  del argv
  outputs.check_output(_OUT.value, overwrite=False)
  convert(_NETWORK.value, read_torch_file(_TORCH_FILE.value), _OUT.value,
          tuple(float(m) for m in _C3D_MEAN.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['network', 'torch_file', 'out'])
  app.run(main)
