"""The stage table, the declared Stage interface, and the one-way import graph."""

import ast
import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import stages

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'moving_digits.py')


def test_every_table_entry_is_a_stage_with_a_known_role_and_an_earlier_predecessor():
  for name, entry in stages.STAGES.items():
    assert issubclass(entry.cls, stages.Stage), name
    assert entry.role in stages.SAMPLING_ROLES + (None,), name
    if entry.init_from:  # Earlier in the chain (toy or text) the stage belongs to.
      chain = next(chain for chain in (stages.CHAIN, stages.TEXT_CHAIN) if name in chain)
      assert chain.index(entry.init_from) < chain.index(name), name
  assert set(stages.CHAIN) | set(stages.TEXT_CHAIN) <= set(stages.STAGES)
  roles = {stages.STAGES[name].role for name in stages.CHAIN} - {None}
  assert roles == set(stages.SAMPLING_ROLES)  # The chain trains every role of the stack.


def test_methods_outside_a_stages_role_raise_naming_the_stage():
  config = config_utils.load_config(f'{CONFIG}:stage=autoencoder,runlocal')
  stage = stages.get_stage('autoencoder')(config)
  with pytest.raises(TypeError, match=r"Stage 'autoencoder' \(AutoencoderStage\) does not "
                     r'implement Stage.sample_window'):
    stage.sample_window(None, None, None, None, None, None)
  with pytest.raises(ValueError, match="Stage 'autoencoder' is not text-conditioned"):
    stage.tokenize(['a prompt'])
  with pytest.raises(ValueError, match="Stage 'autoencoder' has no role in the sampling stack"):
    stages.role_of('autoencoder')
  assert stages.role_of('text_video') == 'video'


def test_register_stage_refuses_non_stages_and_unknown_roles():
  with pytest.raises(ValueError, match="Stage 'toy' must be a subclass of Stage"):
    stages.register_stage('toy', object)
  with pytest.raises(ValueError, match="Stage 'toy' has role 'keyframes'; expected one of"):
    stages.register_stage('toy', stages.Stage, role='keyframes')
  assert 'toy' not in stages.STAGES


def _package_imports(path: pathlib.Path) -> set[str]:
  """The `videoldm...` modules a file imports, by absolute name."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('videoldm'):
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names if alias.name.startswith('videoldm'))
  return names


@pytest.mark.parametrize('package, allowed', [
    ('diffusion', ('videoldm.diffusion',)),
    ('models', ('videoldm.models',)),
    ('stages', ('videoldm.diffusion', 'videoldm.models', 'videoldm.stages')),
])
def test_lower_layers_import_nothing_above_them(package, allowed):
  for path in sorted((ROOT / 'videoldm' / package).glob('*.py')):
    upward = sorted(name for name in _package_imports(path) if not name.startswith(allowed))
    assert not upward, f'{path.name} imports {upward}'


@pytest.mark.parametrize('entry_points', [
    'from videoldm.pipelines import exported, generate, loading, video_ldm\n'
    'from videoldm import evaluate, export',
    'from videoldm import sample',  # Defines flags of the same names as evaluate's.
])
def test_inference_never_loads_the_training_package(entry_points):
  code = ('import sys\n' + entry_points + '\n'
          'loaded = sorted(m for m in sys.modules if m.startswith("videoldm.train"))\n'
          'assert not loaded, loaded\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('stage, removed, expected', [
    ('image', 'centre_latents', False),
    ('upsampler', 'upsampler', None),  # Only `residual*` inside it; checked below.
])
def test_configs_saved_before_a_field_existed_load_with_its_old_meaning(tmp_path, stage, removed,
                                                                       expected):
  config = config_utils.load_config(f'{CONFIG}:stage={stage},runlocal')
  saved = json.loads(config.to_json_best_effort())
  if removed == 'upsampler':
    del saved['model']['upsampler']['residual'], saved['model']['upsampler']['residual_scale']
  else:
    del saved['model'][removed]
  (tmp_path / 'config').mkdir()
  (tmp_path / 'config' / 'metadata').write_text(json.dumps(saved))
  loaded = checkpoints.read_config(str(tmp_path))
  built = stages.get_stage(stage)(loaded)
  if removed == 'upsampler':
    assert (built.options.residual, built.options.residual_scale) == (False, 1.0)
    assert built.target_scale == 1.0
  else:
    assert loaded.model[removed] is expected
  assert 'text_output' not in loaded.model  # Fields of other stages are not added.
  current = json.loads(config.to_json_best_effort())
  assert checkpoints.upgrade_config(json.loads(json.dumps(current))).to_dict() == \
      ml_collections.ConfigDict(current).to_dict()
