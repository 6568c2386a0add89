"""The one training loop every stage uses: `train_and_evaluate(config, workdir)`.

Config fields read here (configs/ set them; optional ones have the default shown):

  seed                      int; all keys derive from it (per step: fold_in(key, step)).
  stage                     name registered in `videoldm.train.stages`.
  total_steps               int; number of train steps (batches consumed).
  batch_size                int; global batch, divisible by the device count.
  optimizer                 lr, warmup_steps, decay_steps (length of the whole warmup +
                            cosine schedule; None: total_steps), b1, b2, weight_decay,
                            grad_clip (global norm; 0/None: off). AdamW.
  ema_decay = None          EMA decay of the trainable params; None disables EMA.
  trainable = None          regex over '/'-joined param paths; None or '.*' = all.
  init_from = None          ConfigDict(workdir= or path=, exempt=[regex...], ignore=[regex...], use_ema=bool).
  mesh                      data = -1, fsdp = 1 (-1: remaining devices).
  sharding.rules = []       [(logical_name, 'data'|'fsdp'|None), ...], e.g. [('mlp', 'fsdp')].
  checkpoint                every_steps (None: only at the end), keep = 3, async_save = True.
  log_every = 50            steps between metric writes.
  eval_every = 0            steps between eval-loss runs on the test split (0: never).
  eval_steps = 1            batches per eval.
  sample_every = 0          steps between sample GIFs from `stage.sample` (0: never).
  metrics_every = 0         steps between digit metrics of `stage.sample` (evaluation/hook.py).
  max_consecutive_nonfinite = 10   non-finite losses in a row that stop the run.
  multiprocess = False      call `jax.distributed.initialize()` first.
  data                      the data ConfigDict (passed to `make_dataset`).
  model                     stage-specific.

A fresh run initialises params with `stage.init_params`, loads `init_from`,
then runs `stage.calibrate` once; a run whose workdir has checkpoints resumes
from the newest readable one (state, data iterator position) instead.
SIGTERM saves a checkpoint at the next step boundary and returns normally.
"""

import functools
import signal
import threading
import time
from typing import Any, Callable

from absl import logging
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from videoldm import distributed
from videoldm.data import pipeline
from videoldm.evaluation import hook
from videoldm.train import checkpointing
from videoldm.train import sharding as sharding_lib
from videoldm.train import state as state_lib
from videoldm.train import stages
from videoldm.train import writers

TrainState = state_lib.TrainState
DatasetFn = Callable[..., Any]


# ----------------------------------------------------------------------------
# Update step.
# ----------------------------------------------------------------------------


def make_train_step(stage: stages.Stage, config: ml_collections.ConfigDict, labels: Any,
                    tx: optax.GradientTransformation, state_sharding: Any,
                    batch_sharding: jax.sharding.NamedSharding, train_key: jax.Array):
  """A jitted `(state, batch) -> (state, metrics)` with explicit shardings and a donated state.

  Only the trainable params are differentiated; frozen ones enter the loss as
  constants and leave the step untouched. A non-finite loss or gradient keeps
  the previous params, optimiser state and EMA and only bumps the counters.
  """
  schedule = state_lib.learning_rate_schedule(config.optimizer, config.total_steps)
  ema_decay = config.get('ema_decay')

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    batch = stage.preprocess(batch)
    rng = jax.random.fold_in(train_key, state.step)
    trainable, frozen = state_lib.partition(state.params, labels)

    def loss_of_trainable(trainable_params):
      return stage.loss_fn(state_lib.merge(trainable_params, frozen), batch, rng, state.step)

    (loss, metrics), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)
    grad_norm = optax.tree.norm(grads)
    full_grads = state_lib.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, new_opt_state = tx.update(full_grads, state.opt_state, state.params)
    new_trainable = optax.apply_updates(trainable, state_lib.partition(updates, labels)[0])
    new_ema = state.ema_params
    if ema_decay is not None:
      new_ema = state_lib.ema_update(state.ema_params, new_trainable, ema_decay)

    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    nonfinite = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=state_lib.merge(keep_if_finite(new_trainable, trainable), frozen),
        opt_state=keep_if_finite(new_opt_state, state.opt_state),
        ema_params=keep_if_finite(new_ema, state.ema_params),
        nonfinite_count=state.nonfinite_count + nonfinite,
        consecutive_nonfinite=(state.consecutive_nonfinite + 1) * nonfinite)
    metrics = dict(metrics)
    metrics.update(
        loss=loss, grad_norm=grad_norm,
        learning_rate=schedule(state.step - state.nonfinite_count),  # Adam's update count.
        nonfinite_count=new_state.nonfinite_count,
        consecutive_nonfinite=new_state.consecutive_nonfinite)
    return new_state, metrics

  replicated = sharding_lib.replicated(batch_sharding.mesh)
  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,))


def eval_params(state: TrainState, labels: Any) -> Any:
  """Params for eval and sampling: EMA of the trainable part when kept, else the params."""
  if state.ema_params is None:
    return state.params
  return state_lib.merge(state.ema_params, state_lib.partition(state.params, labels)[1])


# ----------------------------------------------------------------------------
# Init: param shapes -> shardings -> params -> train state.
# ----------------------------------------------------------------------------


def _init_fn(stage: stages.Stage):
  return lambda rng, batch: stage.init_params(rng, stage.preprocess(batch))


def plan_train_state(stage: stages.Stage, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, batch: dict, init_key: jax.Array):
  """Shapes and shardings of the train state, without computing it.

  Returns `(abstract_state, state_sharding, labels, tx)`; `abstract_state` is
  a tree of ShapeDtypeStructs carrying the shardings (for restoring or lowering).
  """
  rules = config.get('sharding', {}).get('rules') or []
  param_shapes = jax.eval_shape(_init_fn(stage), init_key, batch)
  labels = state_lib.trainable_labels(param_shapes, config.get('trainable'))
  tx = state_lib.make_optimizer(config.optimizer, config.total_steps, labels)
  state_shapes = jax.eval_shape(_make_state_fn(config, labels, tx), param_shapes)
  state_sharding = sharding_lib.tree_shardings_like_params(state_shapes, param_shapes, rules, mesh)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes,
      state_sharding)
  return abstract_state, state_sharding, labels, tx


def _make_state_fn(config: ml_collections.ConfigDict, labels: Any,
                   tx: optax.GradientTransformation):
  return functools.partial(state_lib.init_state, labels=labels, tx=tx,
                           ema_decay=config.get('ema_decay'))


def create_train_state(stage: stages.Stage, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, batch: dict, init_key: jax.Array,
                       restore: Callable[[Any], TrainState | None] | None = None):
  """Builds (or restores) the sharded train state.

  Returns `(state, state_sharding, labels, tx)`. `restore(abstract_state)` may
  return a restored state (resuming); otherwise params are initialised by the
  stage, overwritten from `config.init_from` when set, then `stage.calibrate`d.
  """
  abstract_state, state_sharding, labels, tx = plan_train_state(stage, config, mesh, batch,
                                                                init_key)
  logging.info('Parameter overview:\n%s',
               state_lib.parameter_overview(abstract_state.params, labels))
  if restore is not None:
    restored = restore(abstract_state)
    if restored is not None:
      return restored, state_sharding, labels, tx

  param_sharding = state_sharding.params
  params = jax.jit(_init_fn(stage), out_shardings=param_sharding)(init_key, batch)
  init_config = config.get('init_from')
  if checkpointing.init_from_enabled(init_config):
    host_params = checkpointing.load_init_params(init_config, jax.device_get(params))
    params = jax.device_put(host_params, param_sharding)
  if type(stage).calibrate is not stages.Stage.calibrate:
    calibrate = lambda params, batch: stage.calibrate(params, stage.preprocess(batch))
    params = jax.jit(calibrate, out_shardings=param_sharding)(params, batch)
  state = jax.jit(_make_state_fn(config, labels, tx), out_shardings=state_sharding)(params)
  return state, state_sharding, labels, tx


# ----------------------------------------------------------------------------
# Host-side helpers: devices, data, signals.
# ----------------------------------------------------------------------------


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`videoldm.distributed.initialize()` when `config.multiprocess`; a failure stops the run."""
  if config.get('multiprocess'):
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


class StopSignal:
  """SIGTERM sets a flag the loop reads at step boundaries (agreed across processes)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    else:
      logging.warning('Not in the main thread: SIGTERM will not trigger a checkpoint.')
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d; saving a checkpoint at the next step boundary.', signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset_fn: DatasetFn | None = None) -> TrainState:
  """Trains `config.stage` for `config.total_steps`, resuming from `workdir` if it has checkpoints.

  `dataset_fn` defaults to `videoldm.data.pipeline.make_dataset` (same signature).
  Returns the final train state.
  """
  maybe_initialize_distributed(config)
  dataset_fn = dataset_fn or pipeline.make_dataset
  check_batch_size(config.batch_size, jax.device_count())
  stage = stages.get_stage(config.stage)(config)
  writer = writers.create_writer(workdir)
  log_every = config.get('log_every') or 50
  eval_every, sample_every = config.get('eval_every') or 0, config.get('sample_every') or 0
  metrics_every = config.get('metrics_every') or 0
  checkpoint_config = config.get('checkpoint') or ml_collections.ConfigDict()
  save_every = checkpoint_config.get('every_steps') or config.total_steps
  max_nonfinite = config.get('max_consecutive_nonfinite') or 10

  # --------------------------------------------------------------------- mesh
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  logging.info('Mesh %s over %d devices.', dict(mesh.shape), mesh.size)

  # --------------------------------------------------------------------- data
  data_kwargs = dict(seed=config.seed, process_index=jax.process_index(),
                     process_count=jax.process_count())
  if getattr(stage, 'tokenize_fn', None) is not None:  # Text stages: captions as token ids.
    data_kwargs['tokenize_fn'] = stage.tokenize_fn
  train_iter = dataset_fn(config.data, 'train', config.batch_size, shuffle=True, **data_kwargs)
  eval_iter = eval_start = None
  if eval_every or sample_every or metrics_every:
    eval_iter = dataset_fn(config.data, 'test', config.batch_size, shuffle=False, **data_kwargs)
    eval_start = eval_iter.get_state()

  # ----------------------------------------------------------- init / restore
  root_key = jax.random.key(config.seed)
  init_key, train_key, eval_key, sample_key = (jax.random.fold_in(root_key, i) for i in range(4))
  manager = checkpointing.make_manager(workdir, checkpoint_config)

  def restore(abstract_state):
    found = checkpointing.restore_latest(manager, abstract_state)
    if found is None:
      return None
    step, state, data_state = found
    train_iter.set_state(data_state)
    logging.info('Resuming from the checkpoint at step %d in %s.', step, workdir)
    return state

  example = pipeline.global_batch_to_device(peek(train_iter), batch_sharding)
  state, state_sharding, labels, tx = create_train_state(stage, config, mesh, example, init_key,
                                                         restore)
  del example

  # -------------------------------------------------------------- update step
  train_step = make_train_step(stage, config, labels, tx, state_sharding, batch_sharding,
                               train_key)
  replicated = sharding_lib.replicated(mesh)
  eval_loss = jax.jit(lambda params, batch, rng, step: stage.loss_fn(
      params, stage.preprocess(batch), rng, step), out_shardings=replicated)
  sample = jax.jit(lambda params, batch, rng: stage.sample(params, stage.preprocess(batch), rng),
                   out_shardings=replicated)

  def run_eval(step: int) -> None:
    eval_iter.set_state(eval_start)
    params, totals = eval_params(state, labels), {}
    for i in range(config.get('eval_steps') or 1):
      batch = pipeline.global_batch_to_device(next(eval_iter), batch_sharding)
      loss, metrics = eval_loss(params, batch, jax.random.fold_in(eval_key, i), jnp.int32(step))
      for name, value in {**jax.device_get(metrics), 'loss': jax.device_get(loss)}.items():
        totals[name] = totals.get(name, 0.0) + float(value)
    writer.write_scalars(step, {f'eval/{k}': v / (i + 1) for k, v in totals.items()})

  def run_sample(step: int, write_videos: bool = True) -> None:
    eval_iter.set_state(eval_start)
    batch = pipeline.global_batch_to_device(next(eval_iter), batch_sharding)
    videos = jax.device_get(sample(eval_params(state, labels), batch, sample_key))
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
          f'{checkpointing.checkpoint_dir(workdir)}.')

  logging.info('Training %s from step %d to %d.', config.stage, step, config.total_steps)
  try:
    with StopSignal() as stop_signal:
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
          logging.warning('Stopping at step %d after SIGTERM; the checkpoint is saved.', step)
          break
      if pending_check is not None:
        check_nonfinite(*pending_check)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return state
