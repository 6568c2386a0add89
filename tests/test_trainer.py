"""Trainer loop tests on a toy stage: resume, SIGTERM, non-finite guard, logging, errors.

This file is also a subprocess driver (`python tests/test_trainer.py ...`), so a
restart really happens in a new process. The toy stage and the fake data
iterator used by every trainer test live here.
"""

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videoldm import config_utils
from videoldm import checkpoints
from videoldm import stages
from videoldm.train import checkpointing
from videoldm.train import signals
from videoldm.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_STAGE = 'toy_video_denoiser'
# Persistent compilation cache settings shared with subprocess drivers (set by the fixture).
_CACHE_SETTINGS: dict[str, str] = {}


# ----------------------------------------------------------------------------
# Toy stage: frozen "spatial" convs + a trainable temporal 3-D conv.
# ----------------------------------------------------------------------------


class ToyDenoiser(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, video):  # (b, f, h, w, 3)
    hidden = nn.Conv(self.channels, (3, 3), name='conv_in')(video)
    hidden = nn.GroupNorm(num_groups=4, name='norm')(hidden)
    hidden = nn.Conv(self.channels, (3, 3), name='spatial_mid')(nn.silu(hidden))
    temporal = nn.Conv(self.channels, (3, 1, 1), name='temporal_mixer')(nn.silu(hidden))
    return nn.Conv(3, (3, 3), name='conv_out')(hidden + temporal)


class ToyStage(stages.Stage):
  """Predicts the noise added to a video; NaN loss on `config.model.nan_steps`."""

  def __init__(self, config):
    super().__init__(config)
    self.model = ToyDenoiser(config.model.channels)

  def init_params(self, rng, batch):
    return self.model.init(rng, batch['video'])['params']

  def loss_fn(self, params, batch, rng, step):
    noise = jax.random.normal(rng, batch['video'].shape)
    predicted = self.model.apply({'params': params}, batch['video'] + 0.5 * noise)
    loss = jnp.mean((predicted - noise) ** 2)
    if self.config.model.nan_steps:
      loss = jnp.where(jnp.isin(step, jnp.asarray(self.config.model.nan_steps)), jnp.nan, loss)
    return loss, {'mse': loss}

  def calibrate(self, params, batch):
    """With `config.model.calibrate`, sets the output bias to the batch mean."""
    if not self.config.model.calibrate:
      return params
    bias = jnp.full_like(params['conv_out']['bias'], jnp.mean(batch['video']))
    return {**params, 'conv_out': {**params['conv_out'], 'bias': bias}}

  def sample(self, params, batch, rng):
    noise = jax.random.normal(rng, batch['video'].shape)
    return {'denoised': jnp.tanh(self.model.apply({'params': params}, noise))}


stages.register_stage(TOY_STAGE, ToyStage)


class FakeVideos:
  """Deterministic stand-in for `videoldm.data.pipeline.make_dataset` (same interface).

  With the environment variables TOY_SIGNAL_AT=k and TOY_MARKER_DIR=<dir> the
  train iterator, when asked for batch k, writes `<dir>/waiting` and blocks
  until `<dir>/sent` exists (the config stays that of an undisturbed run).
  """

  def __init__(self, data_config, split, global_batch_size, *, seed, process_index=0,
               process_count=1, shuffle=True, num_epochs=None):
    del shuffle, num_epochs
    self.config, self.split, self.seed = data_config, split, seed
    self.local_batch = global_batch_size // process_count
    self.process_index, self.position = process_index, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.split == 'train' and str(self.position) == os.environ.get('TOY_SIGNAL_AT'):
      marker_dir = os.environ['TOY_MARKER_DIR']
      open(os.path.join(marker_dir, 'waiting'), 'w').close()
      deadline = time.time() + 120
      while not os.path.exists(os.path.join(marker_dir, 'sent')):
        if time.time() > deadline:
          raise TimeoutError('No SIGTERM arrived within 120 s.')
        time.sleep(0.01)
    rng = np.random.default_rng([self.seed, self.split == 'train', self.position,
                                 self.process_index])
    first = rng.uniform(-1, 1, (self.local_batch, self.config.size, self.config.size, 3))
    video = np.stack([np.roll(first, f, axis=2) for f in range(self.config.frames)], axis=1)
    self.position += 1
    return {'video': video.astype(np.float32),
            'labels': rng.integers(0, 10, (self.local_batch,)).astype(np.int32)}

  def get_state(self):
    return {'position': self.position}

  def set_state(self, state):
    self.position = int(state['position'])


def toy_config(**overrides) -> ml_collections.ConfigDict:
  """A complete trainer config for the toy stage; dotted-key overrides."""
  config = ml_collections.ConfigDict(dict(
      seed=0, stage=TOY_STAGE, total_steps=6, batch_size=8,
      optimizer=dict(lr=1e-2, warmup_steps=2, decay_steps=0, b1=0.9, b2=0.99,
                     weight_decay=1e-4, grad_clip=1.0),
      ema_decay=0.9, trainable='temporal', init_from=None,
      mesh=dict(data=-1, fsdp=1),
      sharding=dict(rules=[('mlp', 'fsdp'), ('embed', None), ('norm', None)]),
      checkpoint=dict(every_steps=2, keep=2, async_save=True),
      log_every=1, eval_every=0, eval_steps=2, sample_every=0, metrics_every=0,
      max_consecutive_nonfinite=3, multiprocess=False,
      data=dict(frames=4, size=8, cache_dir=''),
      model=dict(channels=16, nan_steps=(), calibrate=False)))
  return config_utils.override(config, **overrides)


def read_scalar_events(workdir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of every event of a scalar tag in `workdir`'s TensorBoard files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          events.append((event.step, float(tf.make_ndarray(value.tensor))))
  return events


def read_scalars(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of a scalar tag."""
  return dict(read_scalar_events(workdir, tag))


def image_tags(workdir: str) -> set[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value
                  if value.metadata.plugin_data.plugin_name == 'images')
  return tags


@pytest.fixture(scope='module', autouse=True)
def persistent_compilation_cache(tmp_path_factory):
  """Shares compiled executables between this module's runs and its subprocesses.

  The trainer is rebuilt (fresh closures, same HLO) for every run; the cache
  turns those recompiles into loads. Previous settings are restored after.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top,line-too-long
  settings = {'jax_compilation_cache_dir': str(tmp_path_factory.getbasetemp() / 'jax_cache'),
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_persistent_cache_min_entry_size_bytes': 0}
  previous = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  _CACHE_SETTINGS.update({name.upper(): str(value) for name, value in settings.items()})
  yield
  _CACHE_SETTINGS.clear()
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def run_driver(args: list[str], env_extra: dict | None = None, wait: bool = True,
               expected_returncode: int = 0):
  """Runs this file as a subprocess driver (CPU, quiet TensorFlow, shared compile cache)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', **_CACHE_SETTINGS,
             **(env_extra or {}))
  command = [sys.executable, os.path.abspath(__file__), *args]
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  if wait:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == expected_returncode, output[-4000:]
    return output
  return process


def _main_driver(config_json: str, workdir: str) -> None:
  """`python -m videoldm.main` with the toy stage and fake data, in this process."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from videoldm import main as main_lib  # pylint: disable=g-import-not-at-top
  config_file = os.path.join(os.path.dirname(config_json), 'toy_config.py')
  with open(config_file, 'w') as file:
    file.write('import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n'
               f'  return ml_collections.ConfigDict(json.load(open({config_json!r})))\n')
  trainer.train_and_evaluate = functools.partial(trainer.train_and_evaluate, dataset_fn=FakeVideos)
  app.run(main_lib.main, argv=['videoldm.main', f'--config={config_file}', f'--workdir={workdir}'])


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """6 steps in one go, with eval and samples at the end."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  config = toy_config(eval_every=6, sample_every=6)
  state = trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos)
  return config, workdir, state


def test_sigterm_then_resume_in_new_process_is_bit_identical(straight_run, tmp_path):
  config, straight_dir, straight_state = straight_run
  workdir, markers = str(tmp_path / 'resumed'), tmp_path / 'markers'
  markers.mkdir()
  (tmp_path / 'config.json').write_text(config.to_json())
  child = run_driver(['main', str(tmp_path / 'config.json'), workdir], wait=False,
                     env_extra={'TOY_SIGNAL_AT': '2', 'TOY_MARKER_DIR': str(markers)})
  deadline = time.time() + 240
  while not (markers / 'waiting').exists():
    assert child.poll() is None and time.time() < deadline, child.communicate()[0][-4000:]
    time.sleep(0.05)
  child.send_signal(15)  # SIGTERM while step 3 fetches its batch.
  (markers / 'sent').touch()
  output, _ = child.communicate(timeout=240)
  assert child.returncode == signals.EXIT_STOPPED, output[-4000:]  # Stopped, resumable.
  assert 'Stopped by a signal at step 3 of 6' in output, output[-4000:]
  assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ['2', '3']

  state = trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos)
  assert int(state.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(straight_state.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params),
               jax.device_get(straight_state.ema_params))
  straight_losses = read_scalar_events(straight_dir, 'loss')
  assert [step for step, _ in straight_losses] == [1, 2, 3, 4, 5, 6]
  # Steps 1-3 logged by the child, 4-6 by the resumed run (none twice), same values.
  assert sorted(read_scalar_events(workdir, 'loss')) == straight_losses


def test_observability_outputs(straight_run):
  _, workdir, _ = straight_run
  for tag in ('loss', 'grad_norm', 'learning_rate', 'nonfinite_count', 'eval/loss'):
    assert 6 in read_scalars(workdir, tag), tag
  assert np.isclose(read_scalars(workdir, 'learning_rate')[1], 0.0)  # Warmup starts at 0.
  assert read_scalars(workdir, 'steps_per_sec')  # From ReportProgress.
  gifs = glob.glob(os.path.join(workdir, 'samples', 'denoised_00000006.gif'))
  assert len(gifs) == 1
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  frames = np.asarray(imageio.mimread(gifs[0]))
  assert frames.shape[:3] == (4, 8, 8 * 8)  # (f, h, b*w): videos side by side.
  assert 'samples/denoised' in image_tags(workdir)
  saved = json.load(open(os.path.join(checkpoints.checkpoint_dir(workdir), '6', 'config',
                                      'metadata')))
  assert saved['stage'] == TOY_STAGE and saved['total_steps'] == 6


# Orbax leaves an asyncio callback behind after the failed read; harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_truncated_latest_checkpoint_falls_back_to_previous(straight_run, tmp_path, caplog):
  _, straight_dir, state = straight_run
  workdir = str(tmp_path / 'copy')
  shutil.copytree(straight_dir, workdir)
  step_dirs = sorted(os.listdir(checkpoints.checkpoint_dir(workdir)), key=int)
  assert step_dirs == ['4', '6']
  checkpoint_root = checkpoints.checkpoint_dir(workdir)
  data_files = glob.glob(os.path.join(checkpoint_root, '6', 'state', 'd', '*'))
  assert data_files
  for path in data_files:
    with open(path, 'r+b') as file:
      file.truncate(os.path.getsize(path) // 2)
  # A save interrupted mid-write leaves only an unfinalised temporary dir.
  shutil.copytree(os.path.join(checkpoints.checkpoint_dir(workdir), '4'),
                  os.path.join(checkpoints.checkpoint_dir(workdir), '8.orbax-checkpoint-tmp-1'))
  manager = checkpointing.make_manager(workdir, toy_config().checkpoint)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  with caplog.at_level('WARNING'):
    step, restored, data_state = checkpointing.restore_latest(manager, abstract)
  manager.close()
  assert step == 4 and int(restored.step) == 4 and data_state == {'position': 4}
  assert any('step 6' in record.getMessage() for record in caplog.records)
  assert os.path.isdir(os.path.join(checkpoint_root, '6.corrupt'))  # Moved aside.


def test_corrupt_latest_checkpoint_is_moved_aside_and_the_run_finishes_in_a_new_process(
    straight_run, tmp_path):
  config, straight_dir, straight_state = straight_run
  workdir = str(tmp_path / 'copy')
  shutil.copytree(straight_dir, workdir)
  root = checkpoints.checkpoint_dir(workdir)
  for path in glob.glob(os.path.join(root, '6', 'state', 'd', '*')):
    with open(path, 'r+b') as file:
      file.truncate(os.path.getsize(path) // 2)
  (tmp_path / 'config.json').write_text(config.to_json())
  output = run_driver(['main', str(tmp_path / 'config.json'), workdir])  # Resumes at 4, saves 6.
  assert "moved to" in output and "6.corrupt" in output, output[-4000:]
  assert sorted(os.listdir(root)) == ['4', '6', '6.corrupt']
  state = trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos)  # Restores 6.
  assert int(state.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(straight_state.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params),
               jax.device_get(straight_state.ema_params))


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path):
  workdir = str(tmp_path)
  config = toy_config(**{'model.nan_steps': (1, 3, 4, 5), 'max_consecutive_nonfinite': 3,
                         'checkpoint.every_steps': 1, 'checkpoint.keep': 10})
  # Steps are numbered from 1 here; the stage sees 0-based steps, so NaN at 2, 4, 5, 6.
  with pytest.raises(FloatingPointError, match='consecutive steps, the last at step 6'):
    trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos)
  assert read_scalars(workdir, 'nonfinite_count') == {1: 0, 2: 1, 3: 1, 4: 2, 5: 3, 6: 4}
  losses = read_scalars(workdir, 'loss')
  assert np.isnan(losses[2]) and np.isfinite(losses[3])
  # The failing step is not checkpointed; the ones before it are (params frozen since step 3).
  assert sorted(map(int, os.listdir(checkpoints.checkpoint_dir(workdir))))[-1] == 5


def test_missing_init_from_path_is_a_one_line_error(tmp_path):
  missing = str(tmp_path / 'no_such_run')
  config = toy_config(init_from=ml_collections.ConfigDict(
      dict(workdir=missing, path='', exempt=[], ignore=[], use_ema=False)))
  with pytest.raises(FileNotFoundError, match=f'init_from location {missing!r} does not exist'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'), dataset_fn=FakeVideos)


def test_failed_distributed_initialize_stops_the_run():
  jax.devices()  # The backend is up, so initialize() must fail (as without a coordinator).
  with pytest.raises(RuntimeError, match=r'^jax.distributed.initialize\(\) failed'):
    trainer.maybe_initialize_distributed(ml_collections.ConfigDict(dict(multiprocess=True)))


def test_unknown_stage_lists_known_ones():
  with pytest.raises(ValueError, match=f"Unknown stage 'nope'.*{TOY_STAGE}"):
    stages.get_stage('nope')


def test_an_unwritable_workdir_fails_before_any_work(tmp_path):
  (tmp_path / 'file').write_text('x')
  workdir = str(tmp_path / 'file' / 'run')  # Under a regular file: cannot be created.
  with pytest.raises(PermissionError, match=f'Workdir {workdir!r} is not writable'):
    trainer.train_and_evaluate(toy_config(), workdir, dataset_fn=FakeVideos)


def test_batch_size_not_divisible_by_devices_names_both():
  with pytest.raises(ValueError, match='batch_size=6 is not divisible by the device count 4'):
    trainer.check_batch_size(6, 4)


if __name__ == '__main__':
  jax.config.update('jax_default_matmul_precision', 'highest')
  if sys.argv[1] == 'main':
    _main_driver(*sys.argv[2:])
  else:
    import test_trainer_state  # pylint: disable=g-import-not-at-top
    test_trainer_state.driver(sys.argv[2:])
