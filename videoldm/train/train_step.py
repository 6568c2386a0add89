"""The train step and train state every stage shares, importable without the data stack.

`create_train_state` builds (or restores) the sharded state; `make_train_step`
the jitted, donated update. `videoldm.train.trainer` wraps them in the loop;
benchmarks and tests build steps from here without TensorFlow, TFDS or grain.
"""

import concurrent.futures
import functools
import threading
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videoldm import stages
from videoldm.train import checkpointing
from videoldm.train import sharding as sharding_lib
from videoldm.train import state as state_lib

TrainState = state_lib.TrainState


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
  ema_decay = config.ema_decay

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


def compile_for_one_call(jitted, *args):
  """`jitted` compiled for `args`; on CPU at XLA backend optimisation level 0.

  For programs run once, such as param init, compiling costs far more than
  running: the quickstart video stage's init (2 CPU devices) compiles in 17.2 s
  at the default level and 10.9 s at level 0, and runs in 0.2 s.
  """
  lowered = jitted.lower(*args)
  if jax.default_backend() == 'cpu':
    return lowered.compile({'xla_backend_optimization_level': 0})
  return lowered.compile()


def _init_fn(stage: stages.Stage):
  return lambda rng, batch: stage.init_params(rng, stage.preprocess(batch))


def init_params_at(stage: stages.Stage, param_sharding: Any, init_key: jax.Array,
                   batch: dict, paths: list[str]) -> dict[str, jax.Array]:
  """The initial values of the params at `paths` ('/'-joined), as a full init gives them.

  XLA drops the initialisers of all other params: the video stage, whose
  temporal layers are its only new params, compiles its init in 2.8 s, not 10.1 s.
  """
  flat_sharding = flax.traverse_util.flatten_dict(param_sharding, sep='/')

  def init(rng, batch):
    params = flax.traverse_util.flatten_dict(_init_fn(stage)(rng, batch), sep='/')
    return {path: params[path] for path in paths}

  init = jax.jit(init, out_shardings={path: flat_sharding[path] for path in paths})
  return compile_for_one_call(init, init_key, batch)(init_key, batch)


def plan_train_state(stage: stages.Stage, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, batch: dict, init_key: jax.Array):
  """Shapes and shardings of the train state, without computing it.

  Returns `(abstract_state, state_sharding, labels, tx)`; `abstract_state` is
  a tree of ShapeDtypeStructs carrying the shardings (for restoring or lowering).
  """
  rules = config.sharding.rules
  param_shapes = jax.eval_shape(_init_fn(stage), init_key, batch)
  labels = state_lib.trainable_labels(param_shapes, config.trainable)
  tx = state_lib.make_optimizer(config.optimizer, config.total_steps, labels)
  state_shapes = jax.eval_shape(make_state_fn(config, labels, tx), param_shapes)
  state_sharding = sharding_lib.tree_shardings_like_params(state_shapes, param_shapes, rules, mesh)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes,
      state_sharding)
  return abstract_state, state_sharding, labels, tx


def make_state_fn(config: ml_collections.ConfigDict, labels: Any,
                  tx: optax.GradientTransformation):
  """`params -> TrainState`; frozen params held in their model's compute dtype."""
  return functools.partial(state_lib.init_state, labels=labels, tx=tx,
                           ema_decay=config.ema_decay,
                           frozen_dtypes=state_lib.compute_dtypes(config.get('model')))


def compile_in_background(jitted, *args) -> concurrent.futures.Future:
  """A future of `jitted` lowered and compiled for `args` (arrays or ShapeDtypeStructs).

  XLA compiles without holding the GIL, so the train step compiles on one core
  while the main thread initialises and loads the params on another
  (`bench/stage_start.py`). The thread is a daemon: a run stopped by a signal
  exits without waiting for the compile.
  """
  future = concurrent.futures.Future()

  def compile_step():
    future.set_running_or_notify_cancel()
    try:
      future.set_result(jitted.lower(*args).compile())
    except BaseException as error:  # pylint: disable=broad-exception-caught
      future.set_exception(error)

  threading.Thread(target=compile_step, name='compile', daemon=True).start()
  return future


def create_train_state(stage: stages.Stage, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, batch: dict, init_key: jax.Array,
                       restore: Callable[[Any], TrainState | None] | None = None,
                       planned: tuple | None = None):
  """Builds (or restores) the sharded train state.

  Returns `(state, state_sharding, labels, tx)`. `restore(abstract_state)` may
  return a restored state (resuming); otherwise params are initialised by the
  stage, overwritten from `config.init_from` when set, then `stage.calibrate`d.
  `planned` is `plan_train_state`'s result when the caller already has it.
  """
  abstract_state, state_sharding, labels, tx = planned or plan_train_state(
      stage, config, mesh, batch, init_key)
  logging.info('Parameter overview:\n%s',
               state_lib.parameter_overview(abstract_state.params, labels))
  if restore is not None:
    restored = restore(abstract_state)
    if restored is not None:
      return restored, state_sharding, labels, tx

  param_sharding = state_sharding.params
  init_config = config.init_from
  if checkpointing.init_from_enabled(init_config):
    init_kept = functools.partial(init_params_at, stage, param_sharding, init_key, batch)
    host_params = checkpointing.load_init_params(init_config, abstract_state.params, init_kept)
    params = jax.device_put(host_params, param_sharding)
  else:
    init = jax.jit(_init_fn(stage), out_shardings=param_sharding)
    params = compile_for_one_call(init, init_key, batch)(init_key, batch)
  if type(stage).calibrate is not stages.Stage.calibrate:
    calibrate = lambda params, batch: stage.calibrate(params, stage.preprocess(batch))
    params = jax.jit(calibrate, out_shardings=param_sharding)(params, batch)
  state = jax.jit(make_state_fn(config, labels, tx), out_shardings=state_sharding)(params)
  return state, state_sharding, labels, tx
