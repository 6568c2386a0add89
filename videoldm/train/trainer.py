"""The one training loop every stage uses: `train_and_evaluate(config, workdir)`.

Config fields read here (every config in configs/ declares each one; none has a default):

  seed                      int; all keys derive from it (per step: fold_in(key, step)).
  stage                     name in the `videoldm.stages.STAGES` table.
  total_steps               int; number of train steps (batches consumed).
  batch_size                int; global batch, divisible by the device count.
  optimizer                 lr, warmup_steps, decay_steps (length of the whole warmup +
                            cosine schedule; 0: total_steps), b1, b2, weight_decay,
                            grad_clip (global norm; 0: off). AdamW.
  ema_decay                 EMA decay of the trainable params (float; None disables EMA).
  trainable                 regex over '/'-joined param paths; '.*' (or None) = all.
  init_from                 workdir or path ('' both: off), exempt and ignore (tuples of
                            regexes), use_ema (bool); or None: off.
  mesh                      data, fsdp: device counts per axis (-1: the remaining devices).
  sharding.rules            ((logical_name, 'data'|'fsdp'|None), ...), e.g. (('mlp', 'fsdp'),).
  checkpoint                every_steps (0: only at the end), keep (0: all), async_save.
  log_every                 steps between metric writes.
  eval_every                steps between eval-loss runs on the test split (0: never).
  eval_steps                batches per eval.
  sample_every              steps between sample GIFs from `stage.sample` (0: never).
  metrics_every             steps between digit metrics of `stage.sample` (evaluation/hook.py;
                            0: never).
  max_consecutive_nonfinite   non-finite losses in a row that stop the run.
  multiprocess              call `jax.distributed.initialize()` first.
  data                      the data ConfigDict (passed to `make_dataset`).
  model                     stage-specific.

A fresh run initialises params with `stage.init_params` (with `init_from`, only
those its source lacks), loads `init_from`, then runs `stage.calibrate` once; a
run whose workdir has checkpoints resumes from the newest readable one (state,
data iterator position) instead, provided the config kept every key that
shapes the model, data and optimiser state (`videoldm.train.resume`).
A signal stops the run at any phase (`videoldm.train.signals`): in the loop
after saving a checkpoint at the next step boundary.
"""

import contextlib
import time
from typing import Any, Callable

from absl import logging
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections

from videoldm import checkpoints
from videoldm import distributed
from videoldm import outputs
from videoldm import stages
from videoldm.data import latent_cache
from videoldm.data import pipeline
from videoldm.evaluation import hook
from videoldm.train import checkpointing
from videoldm.train import resume
from videoldm.train import sharding as sharding_lib
from videoldm.train import signals
from videoldm.train import state as state_lib
from videoldm.train import train_step as train_step_lib
from videoldm.train import writers

TrainState = state_lib.TrainState
DatasetFn = Callable[..., Any]


# ----------------------------------------------------------------------------
# Host-side helpers: devices, data.
# ----------------------------------------------------------------------------


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`videoldm.distributed.initialize()` when `config.multiprocess`; a failure stops the run."""
  if config.multiprocess:
    distributed.initialize()


def check_batch_size(batch_size: int, num_devices: int) -> None:
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(f'config.batch_size={batch_size} is not divisible by the device count '
                     f'{num_devices}; expected a positive multiple of it.')


def peek(iterator) -> dict:
  """The next batch, leaving the iterator where it was (via get_state/set_state)."""
  position = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(position)
  return batch


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset_fn: DatasetFn | None = None,
                       fresh_start: bool = False) -> TrainState:
  """Trains `config.stage` for `config.total_steps`, resuming from `workdir` if it has checkpoints.

  `dataset_fn` defaults to `videoldm.data.pipeline.make_dataset` (same signature).
  A resumed run must keep the saved config (`videoldm.train.resume`);
  `fresh_start` moves a previous run aside instead. Returns the final train
  state; raises `signals.Stopped` when a signal stopped the run.
  """
  # First: a signal at any phase stops cleanly; the writer and checkpoints close on any exit.
  with signals.StopSignal(workdir) as stop_signal, contextlib.ExitStack() as cleanup:
    return _train(config, workdir, dataset_fn, fresh_start, stop_signal, cleanup)


def _train(config: ml_collections.ConfigDict, workdir: str, dataset_fn: DatasetFn | None,
           fresh_start: bool, stop_signal: signals.StopSignal,
           cleanup: contextlib.ExitStack) -> TrainState:
  """`train_and_evaluate`'s body, under its signal handlers."""
  outputs.check_workdir(workdir)  # Before any slow work: a bad path fails in one line.
  maybe_initialize_distributed(config)
  if fresh_start:
    resume.move_previous_run(workdir)
  else:
    resume.check_config_change(config, workdir)  # Before any slow work, too.
  dataset_fn = dataset_fn or pipeline.make_dataset
  check_batch_size(config.batch_size, jax.device_count())
  stage = stages.get_stage(config.stage)(config)
  if config.data.cache_dir:  # Cached encoder outputs must come from this model's encoders.
    latent_cache.check_settings(latent_cache.read_metadata(config.data.cache_dir), config,
                                config.data.cache_dir, latent_cache.MODEL_KEYS)
  writer = writers.create_writer(workdir)
  cleanup.callback(writer.flush)
  log_every = config.log_every
  eval_every, sample_every, metrics_every = (config.eval_every, config.sample_every,
                                             config.metrics_every)
  save_every = config.checkpoint.every_steps or config.total_steps  # 0: only at the end.
  max_nonfinite = config.max_consecutive_nonfinite

  # --------------------------------------------------------------------- mesh
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  logging.info('Mesh %s over %d devices.', dict(mesh.shape), mesh.size)

  # --------------------------------------------------------------------- data
  data_kwargs = dict(seed=config.seed, process_index=jax.process_index(),
                     process_count=jax.process_count())
  if stage.text_conditioned:  # Text stages: captions as token ids.
    data_kwargs['tokenize_fn'] = stage.tokenize
  train_iter = dataset_fn(config.data, 'train', config.batch_size, shuffle=True, **data_kwargs)
  eval_iter = eval_start = None
  if eval_every or sample_every or metrics_every:
    eval_iter = dataset_fn(config.data, 'test', config.batch_size, shuffle=False, **data_kwargs)
    eval_start = eval_iter.get_state()

  # ----------------------------------------------------------- init / restore
  root_key = jax.random.key(config.seed)
  init_key, train_key, eval_key, sample_key = (jax.random.fold_in(root_key, i) for i in range(4))
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  cleanup.callback(manager.close)
  cleanup.callback(manager.wait_until_finished)  # Runs first.

  def restore(abstract_state):
    found = checkpointing.restore_latest(manager, abstract_state)
    if found is None:
      return None
    step, state, data_state = found
    train_iter.set_state(data_state)
    logging.info('Resuming from the checkpoint at step %d in %s.', step, workdir)
    return state

  example = pipeline.global_batch_to_device(peek(train_iter), batch_sharding)
  planned = train_step_lib.plan_train_state(stage, config, mesh, example, init_key)
  abstract_state, state_sharding, labels, tx = planned
  # The update step compiles in a thread while the params are initialised or restored.
  compiling = train_step_lib.compile_in_background(
      train_step_lib.make_train_step(stage, config, labels, tx, state_sharding,
                                     batch_sharding, train_key), abstract_state, example)
  state, *_ = train_step_lib.create_train_state(stage, config, mesh, example, init_key,
                                                restore, planned=planned)
  del example, abstract_state

  # -------------------------------------------------------------- update step
  train_step = compiling.result()
  replicated = sharding_lib.replicated(mesh)
  eval_loss = jax.jit(lambda params, batch, rng, step: stage.loss_fn(
      params, stage.preprocess(batch), rng, step), out_shardings=replicated)
  sample = jax.jit(lambda params, batch, rng: stage.sample(params, stage.preprocess(batch), rng),
                   out_shardings=replicated)

  def run_eval(step: int) -> None:
    eval_iter.set_state(eval_start)
    params, totals = train_step_lib.eval_params(state, labels), {}
    for i in range(config.eval_steps):
      batch = pipeline.global_batch_to_device(next(eval_iter), batch_sharding)
      loss, metrics = eval_loss(params, batch, jax.random.fold_in(eval_key, i), jnp.int32(step))
      for name, value in {**jax.device_get(metrics), 'loss': jax.device_get(loss)}.items():
        totals[name] = totals.get(name, 0.0) + float(value)
    writer.write_scalars(step, {f'eval/{k}': v / (i + 1) for k, v in totals.items()})

  def run_sample(step: int, write_videos: bool = True) -> None:
    eval_iter.set_state(eval_start)
    batch = pipeline.global_batch_to_device(next(eval_iter), batch_sharding)
    videos = jax.device_get(sample(train_step_lib.eval_params(state, labels), batch, sample_key))
    if write_videos:
      writers.write_samples(workdir, writer, step, videos)
    if metrics_every and (step % metrics_every == 0 or step == config.total_steps):
      metrics_hook(step, videos, writer)
  metrics_hook = hook.MetricsHook(config, workdir) if metrics_every else None

  # --------------------------------------------------------------------- loop
  step = int(jax.device_get(state.step))
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.total_steps, writer=writer, every_steps=log_every)
  pending_check = None

  def check_nonfinite(checked_step: int, consecutive: jax.Array) -> None:
    if int(jax.device_get(consecutive)) >= max_nonfinite:
      raise FloatingPointError(
          f'The loss was non-finite for {max_nonfinite} consecutive steps, the last at step '
          f'{checked_step}; stopping. The last good checkpoint stays in '
          f'{checkpoints.checkpoint_dir(workdir)}.')

  logging.info('Training %s from step %d to %d.', config.stage, step, config.total_steps)
  stop_signal.start_loop()
  while step < config.total_steps:
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      batch = pipeline.global_batch_to_device(next(train_iter), batch_sharding)
      state, metrics = train_step(state, batch)
    step += 1
    if pending_check is not None:  # One step behind, so the host does not stall the device.
      check_nonfinite(*pending_check)
    pending_check = (step, metrics['consecutive_nonfinite'])
    report_progress(step, time.time())

    if step % log_every == 0 or step == config.total_steps:
      scalars = jax.device_get(metrics)
      scalars.pop('consecutive_nonfinite')
      if hasattr(train_iter, 'skipped_clips'):  # Clips a video source could not decode.
        scalars['data/skipped_clips'] = train_iter.skipped_clips
      writer.write_scalars(step, {name: float(value) for name, value in scalars.items()})
    if eval_every and (step % eval_every == 0 or step == config.total_steps):
      with report_progress.timed('eval'):
        run_eval(step)
    sample_now = sample_every and (step % sample_every == 0 or step == config.total_steps)
    if sample_now or (metrics_every and (step % metrics_every == 0 or
                                         step == config.total_steps)):
      with report_progress.timed('sample'):
        run_sample(step, write_videos=bool(sample_now))

    stop = stop_signal.should_stop()
    if step % save_every == 0 or step == config.total_steps or stop:
      check_nonfinite(*pending_check)
      checkpointing.save(manager, step, state, train_iter.get_state(), config, force=True)
    if stop:
      manager.wait_until_finished()
      raise signals.Stopped(f'Stopped by a signal at step {step} of {config.total_steps}; the '
                            f'checkpoint is saved. Run the same command to resume {workdir}.',
                            step)
  if pending_check is not None:
    check_nonfinite(*pending_check)
  return state
