"""Every third-party module the package imports at module level is a declared requirement.

`make quickstart` installs only `install_requires`; a module imported by the
library but installed only through the test extras breaks that command.
"""

import ast
import importlib.metadata
import pathlib
import re
import subprocess
import sys

import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_kwargs() -> dict:
  captured = {}
  original = setuptools.setup
  setuptools.setup = lambda **kwargs: captured.update(kwargs)
  try:
    source = (ROOT / 'setup.py').read_text()
    exec(compile(source, 'setup.py', 'exec'), {'__name__': 'setup'})  # pylint: disable=exec-used
  finally:
    setuptools.setup = original
  return captured


def _requirements() -> set[str]:
  names = {re.split(r'[<>=\[;]', spec)[0].strip() for spec in _setup_kwargs()['install_requires']}
  return {_normalise(name) for name in names}


def _normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _module_level_imports(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  names = set()
  for node in tree.body:  # Imports inside functions are optional (lazy) ones.
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split('.')[0])
  return names


def test_module_level_imports_are_install_requirements():
  requirements = _requirements()
  providers = importlib.metadata.packages_distributions()
  missing = {}
  for path in sorted((ROOT / 'videoldm').rglob('*.py')):
    for module in _module_level_imports(path):
      if module in sys.stdlib_module_names or module in ('videoldm', '__future__'):
        continue
      dists = {_normalise(d) for d in providers.get(module, [module])}
      if not dists & requirements:
        missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
  assert not missing, f'imported but not in install_requires: {missing}'


# Config scripts and the train step load on machines without the data stack (GPU
# images ship no TensorFlow; bench/gpu.sh relies on this).
_WITHOUT_DATA_STACK = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'grain', 'clu'):
      raise ModuleNotFoundError(f'No module named {name!r}')
sys.meta_path.insert(0, Missing())
from videoldm import config_utils
from videoldm.stages import video
from videoldm.train import train_step
config = config_utils.load_config('configs/moving_digits.py:stage=video,runlocal')
assert config.data.name == 'moving_digits', config.data.name
print('loaded', train_step.create_train_state.__name__)
"""


def test_configs_and_train_step_import_without_tensorflow_tfds_grain_or_clu():
  result = subprocess.run([sys.executable, '-c', _WITHOUT_DATA_STACK], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu',
                               'PATH': '/usr/bin:/bin'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'loaded create_train_state' in result.stdout


def test_python_311_to_313_and_jax_010_to_011_are_admitted():
  from packaging import specifiers  # pylint: disable=g-import-not-at-top
  kwargs = _setup_kwargs()
  python = specifiers.SpecifierSet(kwargs['python_requires'])
  assert [v in python for v in ('3.11.7', '3.12.1', '3.13.0', '3.14.0')] == [True] * 3 + [False]
  jax = [spec for spec in kwargs['install_requires'] if re.match(r'jax[<>=]', spec)]
  assert len(jax) == 1
  jax_range = specifiers.SpecifierSet(jax[0][len('jax'):])
  assert [v in jax_range for v in ('0.10.2', '0.11.2', '0.12.0')] == [True, True, False]


def _local_imports(path: pathlib.Path, seen: set) -> set[str]:
  """Top-level module names imported by a test file and the test helpers it imports."""
  if path in seen:
    return set()
  seen.add(path)
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split('.')[0])
  for name in list(names):
    helper = ROOT / 'tests' / f'{name}.py'
    if helper.exists():
      names |= _local_imports(helper, seen)
  return names


def test_the_second_python_runs_only_tests_without_pytorch_references():
  makefile = (ROOT / 'Makefile').read_text()
  block = re.search(r'^FAST_TESTS \?= (.*?)\n\n', makefile, re.S | re.M).group(1)
  files = re.findall(r'tests/\S+\.py', block)
  assert len(files) >= 8
  for name in files:
    imported = _local_imports(ROOT / name, set())
    assert not imported & {'torch', 'diffusers', 'transformers', 'nbclient'}, name
