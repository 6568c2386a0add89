"""Train state tests: freezing, optimiser state, compiled FLOPs, sharding, init_from."""

import json

import flax
import jax
import ml_collections
import numpy as np
import pytest

from test_trainer import FakeVideos, ToyStage, run_driver, toy_config
from test_trainer import persistent_compilation_cache  # pylint: disable=unused-import  # Fixture.
from videoldm import config_utils
from videoldm.data import pipeline
from videoldm.train import checkpointing
from videoldm.train import sharding as sharding_lib
from videoldm.train import state as state_lib
from videoldm.train import train_step
from videoldm.train import trainer

MESHES = ((1, 1), (8, 1), (2, 4), (4, 2))


def build(config, devices=None, host_state=None):
  """(state, step function, global batches) for `config` on `devices`.

  The state is initialised by the trainer, or placed from `host_state` (numpy)
  with the shardings the trainer plans (saves an init compile per mesh).
  """
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  data = FakeVideos(config.data, 'train', config.batch_size, seed=config.seed)
  batches = [pipeline.global_batch_to_device(next(data), batch_sharding) for _ in range(3)]
  stage = ToyStage(config)
  key = jax.random.key(config.seed)
  if host_state is None:
    state, state_sharding, labels, tx = train_step.create_train_state(stage, config, mesh,
                                                                   batches[0], key)
  else:
    _, state_sharding, labels, tx = train_step.plan_train_state(stage, config, mesh, batches[0], key)
    state = jax.device_put(host_state, state_sharding)
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding, batch_sharding, key)
  return state, step, batches


def flat(tree):
  """{'/'-joined path: numpy leaf} of any pytree."""
  return {'/'.join(sharding_lib.path_names(key_path)): np.asarray(leaf)
          for key_path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def expected_spec(path: str, shape, fsdp: int) -> jax.sharding.PartitionSpec:
  """The spec the test rules [('mlp', 'fsdp'), ('embed', None), ('norm', None)] name."""
  out = 'fsdp' if shape[-1] % fsdp == 0 else None
  if path.endswith('kernel'):
    return jax.sharding.PartitionSpec(*([None] * (len(shape) - 1)), out)
  if path.endswith('bias'):
    return jax.sharding.PartitionSpec(out)
  return jax.sharding.PartitionSpec(None)


def driver(args):
  """Subprocess with 8 CPU devices: one step per mesh vs one device; writes JSON results."""
  (output_path,) = args
  config = toy_config(trainable=None)
  results = {}
  reference = initial = None
  for data, fsdp in MESHES:  # The first is the one-device reference.
    mesh_config = config_utils.override(config, **{'mesh.data': data, 'mesh.fsdp': fsdp})
    state, step, batches = build(mesh_config, jax.devices()[:data * fsdp], initial)
    if initial is None:
      initial = jax.device_get(state)
    state, metrics = step(state, batches[0])
    params = flat(state.params)
    spec_errors = [path for path, leaf in flax.traverse_util.flatten_dict(
        state.params, sep='/').items() if leaf.sharding.spec != expected_spec(
            path, leaf.shape, fsdp)]
    moments = state.opt_state.inner_states['trainable'].inner_state[1][0].mu
    spec_errors += [f'mu/{path}' for path, leaf in flax.traverse_util.flatten_dict(
        moments, sep='/').items() if leaf.sharding.spec != expected_spec(path, leaf.shape, fsdp)]
    if reference is None:
      reference = (float(metrics['loss']), params)
    results[f'{data}x{fsdp}'] = dict(
        loss=float(metrics['loss']), reference_loss=reference[0], spec_errors=spec_errors,
        param_errors=[path for path in params if not np.allclose(
            params[path], reference[1][path], rtol=1e-5, atol=1e-7)])
  try:
    trainer.train_and_evaluate(toy_config(batch_size=6), '/nonexistent', dataset_fn=FakeVideos)
  except ValueError as error:
    results['batch_error'] = str(error)
  with open(output_path, 'w') as file:
    json.dump(results, file)


def test_sharded_steps_match_one_device_and_follow_the_rules(tmp_path):
  output = tmp_path / 'results.json'
  run_driver(['sharding', str(output)],
             env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  results = json.loads(output.read_text())
  for data, fsdp in MESHES:
    result = results[f'{data}x{fsdp}']
    np.testing.assert_allclose(result['loss'], result['reference_loss'], rtol=1e-5)
    assert result['param_errors'] == [], (data, fsdp)
    assert result['spec_errors'] == [], (data, fsdp)
  assert results['batch_error'] == ('config.batch_size=6 is not divisible by the device count 8; '
                                    'expected a positive multiple of it.')


@pytest.fixture(scope='module')
def temporal_only():
  return build(toy_config(**{'model.nan_steps': (1,)}))


def test_frozen_params_untouched_temporal_trained_nonfinite_skipped(temporal_only):
  state, step, batches = temporal_only
  history = [(flat(state.params), flat(state.opt_state), flat(state.ema_params))]
  for batch in batches:  # The stage's loss is NaN on step 1.
    state, metrics = step(state, batch)
    history.append((flat(state.params), flat(state.opt_state), flat(state.ema_params)))
  initial, final = history[0][0], history[-1][0]
  assert {p for p in initial if p.startswith('temporal')} == {
      'temporal_mixer/kernel', 'temporal_mixer/bias'}
  for path in initial:
    if path.startswith('temporal'):
      assert not np.array_equal(initial[path], final[path]), path
    else:
      np.testing.assert_array_equal(initial[path], final[path])  # Bit-identical.
  before_nan, after_nan = history[1], history[2]
  for old, new in zip(before_nan, after_nan):
    assert old.keys() == new.keys()
    for path in old:
      np.testing.assert_array_equal(old[path], new[path])
  assert int(state.step) == 3 and int(state.nonfinite_count) == 1
  assert int(state.consecutive_nonfinite) == 0


def test_optimizer_state_covers_trainable_leaves_only(temporal_only):
  state = temporal_only[0]
  moment_paths = set()
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    names = sharding_lib.path_names(key_path)
    if leaf.ndim:
      moment_paths.add(names[names.index('mu' if 'mu' in names else 'nu'):])
  assert moment_paths == {(moment, 'temporal_mixer', name) for moment in ('mu', 'nu')
                          for name in ('kernel', 'bias')}
  assert set(flat(state.ema_params)) == {'temporal_mixer/kernel', 'temporal_mixer/bias'}


def test_frozen_params_held_in_their_model_compute_dtype_train_as_rounded_float32():
  config = toy_config()
  with config.unlocked():  # Sub-model configs naming a compute dtype, as `model.unet.dtype`.
    config.model.spatial_mid = dict(dtype='bfloat16')
    config.model.temporal_mixer = dict(dtype='bfloat16')  # Trainable: stays float32.
  held, step, batches = build(config)
  initial = flat(held.params)
  assert {path: str(leaf.dtype) for path, leaf in initial.items() if 'kernel' in path} == {
      'conv_in/kernel': 'float32', 'spatial_mid/kernel': 'bfloat16',
      'temporal_mixer/kernel': 'float32', 'conv_out/kernel': 'float32'}
  # The same state with every param float32: holding in bf16 = computing with rounded weights.
  as_float32 = jax.device_get(held)
  as_float32 = as_float32.replace(params=jax.tree.map(lambda leaf: np.asarray(leaf, np.float32),
                                                      as_float32.params))
  reference, reference_step, _ = build(toy_config(), host_state=as_float32)
  for batch in batches:
    held, _ = step(held, batch)
    reference, _ = reference_step(reference, batch)
  held_params, reference_params = flat(held.params), flat(reference.params)
  assert held_params['spatial_mid/kernel'].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(held_params['spatial_mid/kernel'], initial['spatial_mid/kernel'])
  for path, leaf in reference_params.items():
    np.testing.assert_array_equal(np.asarray(held_params[path], np.float32), leaf, err_msg=path)


def step_flops(config) -> float:
  """FLOPs of the compiled train step, lowered from abstract (shape-only) inputs."""
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  data = FakeVideos(config.data, 'train', 8, seed=0)
  batch = pipeline.global_batch_to_device(next(data), batch_sharding)
  stage, key = ToyStage(config), jax.random.key(0)
  abstract, state_sharding, labels, tx = train_step.plan_train_state(stage, config, mesh, batch, key)
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding, batch_sharding, key)
  analysis = step.lower(abstract, batch).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


def test_compiled_step_skips_frozen_weight_gradients():
  temporal_flops, all_flops = step_flops(toy_config()), step_flops(toy_config(trainable='.*'))
  # Frozen spatial convs need neither weight gradients nor (being before the temporal
  # layer) input gradients, so the step must be markedly cheaper.
  assert temporal_flops < 0.75 * all_flops, (temporal_flops, all_flops)


def test_one_call_compilation_matches_the_default_program():
  # Param init compiled at XLA level 0 on CPU gives the same params as a plain jit.
  config = toy_config()
  stage = ToyStage(config)
  batch = next(FakeVideos(config.data, 'train', config.batch_size, seed=0))
  init = jax.jit(lambda key, batch: stage.init_params(key, batch))
  once = train_step.compile_for_one_call(init, jax.random.key(3), batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               once(jax.random.key(3), batch), init(jax.random.key(3), batch))


def test_step_compiled_in_background_matches_the_jitted_step():
  # The trainer compiles the update step in a thread from the abstract state while the
  # params are initialised; that executable must step exactly as the jitted function.
  config = toy_config()
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch = pipeline.global_batch_to_device(
      next(FakeVideos(config.data, 'train', config.batch_size, seed=0)), batch_sharding)
  stage, key = ToyStage(config), jax.random.key(0)
  planned = train_step.plan_train_state(stage, config, mesh, batch, key)
  abstract, state_sharding, labels, tx = planned
  step = train_step.make_train_step(stage, config, labels, tx, state_sharding, batch_sharding, key)
  compiling = train_step.compile_in_background(step, abstract, batch)
  state, *_ = train_step.create_train_state(stage, config, mesh, batch, key, planned=planned)
  host_state = jax.device_get(state)
  background_state, background_metrics = compiling.result()(state, batch)
  jitted_state, jitted_metrics = step(jax.device_put(host_state, state_sharding), batch)
  assert int(background_state.step) == 1
  for name, leaf in flat(background_state).items():
    np.testing.assert_array_equal(leaf, flat(jitted_state)[name], err_msg=name)
  np.testing.assert_array_equal(background_metrics['loss'], jitted_metrics['loss'])


def test_trainable_regex_errors():
  params = {'conv': {'kernel': np.zeros((2, 2))}}
  with pytest.raises(ValueError, match="config.trainable='temporal' matches no parameter"):
    state_lib.trainable_labels(params, 'temporal')
  with pytest.raises(ValueError, match=r"config.trainable='\(' is not a valid regex"):
    state_lib.trainable_labels(params, '(')


def _init_config(**fields):
  defaults = dict(workdir='', path='', exempt=[], ignore=[], use_ema=False)
  return ml_collections.ConfigDict({**defaults, **fields})


def test_init_from_checkpoint_loads_params_and_ema(tmp_path):
  config = toy_config()
  mesh = sharding_lib.make_mesh(config.mesh)
  batch = pipeline.global_batch_to_device(next(FakeVideos(config.data, 'train', 8, seed=0)),
                            sharding_lib.batch_sharding(mesh))
  state, *_ = train_step.create_train_state(ToyStage(config), config, mesh, batch, jax.random.key(0))
  source = state.replace(
      params=jax.tree.map(lambda x: x + 1.0, state.params),
      ema_params=jax.tree.map(lambda x: x - 1.0, state.ema_params))
  manager = checkpointing.make_manager(str(tmp_path), toy_config().checkpoint)
  checkpointing.save(manager, 7, source, {'position': 0}, toy_config())
  manager.wait_until_finished()
  manager.close()
  expected = {**flat(source.params), **flat(source.ema_params)}  # use_ema: EMA over params.
  expected['conv_out/bias'] = np.full((3,), np.mean(np.asarray(batch['video'])), np.float32)
  config = toy_config(init_from=_init_config(workdir=str(tmp_path), use_ema=True),
                      **{'model.calibrate': True})  # Calibration runs after loading.
  loaded, *_ = train_step.create_train_state(ToyStage(config), config, mesh, batch, jax.random.key(1))
  loaded = flat(loaded.params)
  assert loaded.keys() == expected.keys() and len(flat(source.ema_params)) == 2
  for path, value in loaded.items():
    np.testing.assert_allclose(value, expected[path], rtol=1e-6 if path == 'conv_out/bias' else 0)


def test_init_from_initialises_only_the_params_the_source_lacks(tmp_path, monkeypatch):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config = toy_config()
  mesh = sharding_lib.make_mesh(config.mesh)
  batch = pipeline.global_batch_to_device(next(FakeVideos(config.data, 'train', 8, seed=0)),
                                          sharding_lib.batch_sharding(mesh))
  fresh, *_ = train_step.create_train_state(ToyStage(config), config, mesh, batch,
                                            jax.random.key(1))
  fresh = flat(fresh.params)
  source = {path: value + 1.0 for path, value in fresh.items() if not path.startswith('conv_out')}
  save_file(source, str(tmp_path / 'p.safetensors'))
  initialised = []
  init_some = train_step.init_params_at
  monkeypatch.setattr(train_step, 'init_params_at', lambda *args: initialised.append(args[-1]) or
                      init_some(*args))
  config = toy_config(init_from=_init_config(path=str(tmp_path / 'p.safetensors'),
                                             exempt=['^conv_out/']))
  loaded, *_ = train_step.create_train_state(ToyStage(config), config, mesh, batch,
                                             jax.random.key(1))
  assert initialised == [['conv_out/bias', 'conv_out/kernel']]
  for path, value in flat(loaded.params).items():  # Kept leaves: exactly the full init's.
    np.testing.assert_array_equal(value, source.get(path, fresh[path]), err_msg=path)


def test_init_from_files_and_strict_name_check(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  target = {'conv': {'kernel': np.zeros((2, 3), np.float32)},
            'temporal': {'kernel': np.full((3, 3), 5.0, np.float32)}}
  source = {'conv': {'kernel': np.ones((2, 3), np.float32)}}
  (tmp_path / 'p.msgpack').write_bytes(flax.serialization.msgpack_serialize(source))
  save_file({'conv/kernel': source['conv']['kernel']}, str(tmp_path / 'p.safetensors'))
  for name in ('p.msgpack', 'p.safetensors'):
    config = _init_config(path=str(tmp_path / name), exempt=['^temporal'])
    loaded = checkpointing.load_init_params(config, target)
    np.testing.assert_array_equal(loaded['conv']['kernel'], 1.0)
    np.testing.assert_array_equal(loaded['temporal']['kernel'], 5.0)  # Exempt: keeps its init.
  flat_source = {'conv/kernel': source['conv']['kernel']}
  with pytest.raises(ValueError, match="Parameter 'temporal/kernel' is not in init_from"):
    checkpointing.merge_init_params(target, flat_source)
  with pytest.raises(ValueError, match="Parameter 'head/w' of init_from 'src' has no counterpart"):
    checkpointing.merge_init_params(target, {**flat_source, 'head/w': np.ones(2)}, ['temporal'],
                                    'src')
  with pytest.raises(ValueError, match=r"'conv/kernel' has shape \(3, 2\) in init_from"):
    checkpointing.merge_init_params(target, {'conv/kernel': np.ones((3, 2))}, ['temporal'])


def test_the_init_summary_is_one_line_of_counts_per_exempt_pattern():
  kept = [f'unet/down_{i}/temporal_attn/kernel' for i in range(200)] + ['discriminator/conv']
  line = checkpointing.init_summary('/run/image/checkpoints/4', kept,
                                    ['(temporal|time_mixer)', '^discriminator/'])
  assert line == ("Initialised params from /run/image/checkpoints/4; 201 exempt params keep "
                  "their init (200 match '(temporal|time_mixer)', 1 match '^discriminator/').")
