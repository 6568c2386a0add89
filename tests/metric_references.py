"""The published PyTorch metric networks, as parity references (test-only).

`make test` installs pytorch-fid, cd-fvd and torchvision without their
dependencies into `<venv>/reference`, off the default path: torchvision's PyPI
wheel is built for CUDA torch, so with the CPU torch its C++ ops do not load
and its import fails while registering their meta kernels, which would break
every `transformers` import if it were importable everywhere. The references
need only its pure-Python Inception-v3, so its meta registrations are skipped.
Nothing is downloaded: callers pass random state dicts.
"""

import os
import sys
import types

REFERENCE_DIR = os.path.join(sys.prefix, 'reference')


def _reference_path(*parts: str) -> str:
  path = os.path.join(REFERENCE_DIR, *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing; `make install` puts the metric reference libraries in '
        f'{REFERENCE_DIR} (pip install --no-deps --target {REFERENCE_DIR} torchvision==0.28.0 '
        'pytorch-fid==0.3.0 cd-fvd==0.1.1).')
  return path


def _on_path():
  if REFERENCE_DIR not in sys.path:
    sys.path.append(REFERENCE_DIR)


def pytorch_fid_inception():
  """pytorch-fid's `inception` module (its InceptionV3 with the FID blocks)."""
  _reference_path('pytorch_fid', 'inception.py')
  _on_path()
  sys.modules.setdefault('torchvision._meta_registrations',
                         types.ModuleType('torchvision._meta_registrations'))
  from pytorch_fid import inception  # pylint: disable=g-import-not-at-top
  return inception


def cdfvd_i3d():
  """cd-fvd's I3D `utils` module: `preprocess_i3d` and `pytorch_i3d.InceptionI3d` (the
  PyTorch I3D of TATS and content-debiased FVD)."""
  _reference_path('cdfvd', 'third_party', 'i3d', 'utils.py')
  _on_path()
  from cdfvd.third_party.i3d import utils  # pylint: disable=g-import-not-at-top
  return utils
